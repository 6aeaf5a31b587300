"""Quantized checkpoints on the GPU: imp on cuda vs imp on cpu (fp32 logits), per format.

The fixtures are written on the development machine by the real producers (compressed-tensors,
nvidia-modelopt and gguf are not on the GPU image) into .gpufix/ with a manifest.json, and
carried with the call:

    python3 tests/gpu/smoke_formats.py --fixtures .gpufix --out $OUT
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.gpu.smoke_common import compare_devices, write_json  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    manifest = json.loads((args.fixtures / "manifest.json").read_text())
    results, ok = {}, True
    for name, path in manifest.items():
        for mode in ("load", "on_the_fly"):
            r = compare_devices(Path(path), prompt_len=24, steps=4, tol=1e-3, flags={"quant.dequant": mode})
            results[f"{name} [{mode}]"] = r
            ok &= r["passed"]
            print(f"{name:24s} {mode:10s} prefill {r['prefill_max_abs_diff']:.2e} decode {r['decode_max_abs_diff']:.2e} "
                  f"{'PASS' if r['passed'] else 'FAIL'}", flush=True)
    for name in ("mistral/gguf-q4_k_m", "qwen36/modelopt-mixed", "gemma4/gguf-nvfp4"):
        proc = subprocess.run([sys.executable, "-m", "imp_core.cli", "run", "--model", manifest[name], "--device",
                               "cuda", "--prompt", "Tell me about the sea.", "-n", "12", "--seed", "1"],
                              capture_output=True, text=True, timeout=300)
        results[f"cli {name}"] = {"returncode": proc.returncode, "stderr_tail": proc.stderr[-300:]}
        ok &= proc.returncode == 0
        print(f"imp run --device cuda {name}: rc={proc.returncode} {proc.stderr.strip().splitlines()[-1]}", flush=True)
    write_json(args.out, "smoke_formats.json", results)
    print("FORMATS SMOKE", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
