"""GPU smoke for the Mistral family (run on the device machine after tests/gpu/bootstrap.sh).

1. A tiny Mistral3-layout checkpoint: imp on cuda vs imp on cpu (fp32 logits), and
   `imp run --device cuda` end to end.
2. Mistral-Small-3.2-24B shape with random bf16 weights: prefill 512, decode 32 (reference path).

    python3 tests/gpu/smoke_mistral.py --out $OUT
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.gpu.smoke_common import compare_devices, full_shape_smoke, table, write_json  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--skip-full", action="store_true")
    args = ap.parse_args()
    from imp_mistral.family import MistralFamily
    from imp_mistral.presets import MISTRAL_SMALL_3_2_24B
    from tests.mistral_factory import write_checkpoint

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        ck = write_checkpoint(Path(tmp) / "m3", "mistral3", seed=5)
        results["tiny_cpu_vs_cuda"] = compare_devices(ck, tol=1e-3)
        print("mistral tiny: cpu vs cuda (fp32)\n" + table(results["tiny_cpu_vs_cuda"]), flush=True)
        proc = subprocess.run([sys.executable, "-m", "imp_core.cli", "run", "--model", str(ck), "--device", "cuda",
                               "--prompt", "Tell me about the sea.", "-n", "16", "--seed", "1"],
                              capture_output=True, text=True)
        results["cli_cuda"] = {"returncode": proc.returncode, "stderr_tail": proc.stderr[-600:]}
        print(f"imp run --device cuda: rc={proc.returncode}\n{proc.stderr[-400:]}", flush=True)
    if not args.skip_full:
        cfg = MistralFamily().config_from_dict(MISTRAL_SMALL_3_2_24B)
        params = sum(
            (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim * cfg.hidden_size
            + cfg.num_attention_heads * cfg.head_dim * cfg.hidden_size + 3 * cfg.intermediate_size * cfg.hidden_size
            for _ in range(cfg.num_hidden_layers)) + cfg.vocab_size * cfg.hidden_size  # + lm_head read per token
        res = full_shape_smoke(MistralFamily(), MISTRAL_SMALL_3_2_24B, active_bytes_per_token=2 * params)
        results["full_shape_bf16"] = res
        print("mistral-small-3.2-24b, random bf16, reference path\n" + table(res), flush=True)
    write_json(args.out, "smoke_mistral.json", results)
    ok = results["tiny_cpu_vs_cuda"]["passed"] and results["cli_cuda"]["returncode"] == 0
    print("MISTRAL SMOKE", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
