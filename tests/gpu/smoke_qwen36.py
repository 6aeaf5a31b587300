"""GPU smoke for the Qwen3.5/3.6 family (run on the device machine after tests/gpu/bootstrap.sh).

1. A tiny fused-layout checkpoint (tests/qwen36_factory.py; if this machine's transformers cannot
   write it, the same tensors from the family's synthetic spec): imp on cuda vs imp on cpu, fp32
   logits of a prefill longer than one DeltaNet chunk and 8 cached decode steps (tolerance 1e-3;
   cuDNN/matmul TF32 off so fp32 means fp32), and `imp run --device cuda` end to end.
2. Qwen3.6-35B-A3B shape with random bf16 weights built on the GPU: prefill 512 tokens, decode 32
   greedy tokens with the engine's Generator (reference path, not the fast path); tok/s, weight
   bytes, bytes one decode step must read (active weights: 8 of 256 experts, the shared expert,
   attention/DeltaNet, lm_head; plus KV and DeltaNet state), achieved GB/s and its fraction of
   the measured copy bandwidth, printed beside transformers' figures on the same H200 (TRANSFORMERS_H200).

    python3 tests/gpu/smoke_qwen36.py --out $OUT             # GPU machine (~2-3 min, ~70 GB)
    python3 tests/gpu/smoke_qwen36.py --out DIR --cpu-dry-run  # any machine: all on cpu, mini shape
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from tests.gpu.smoke_common import measure_copy_bandwidth, table, write_json  # noqa: E402

TRANSFORMERS_H200 = {  # measured 2026-11-26, HF transformers 5.17 on the H200, bf16, random weights
    "hf_eager_decode_tok_s": 13.0, "hf_eager_prefill_tok_s (2048-token forward)": 7361.0,
    "hf_static_compiled_decode_tok_s": "105-111",
}


# -- 1. tiny checkpoint: cuda vs cpu --------------------------------------------------------------
def write_synthetic_checkpoint(dest: Path) -> Path:
    """The factory's tiny fused-layout checkpoint without transformers: the family's synthetic spec
    (norms, A_log and dt_bias randomised) saved under the published names."""
    from safetensors.torch import save_file

    from imp_core.model.synthetic import SyntheticWeights
    from imp_qwen36.family import Qwen36Family
    from tests.qwen36_factory import MOE, TEXT
    from tests.tiny_tokenizer import write_tiny_tokenizer

    text = {**TEXT, **MOE, "model_type": "qwen3_5_moe_text"}
    family = Qwen36Family()
    cfg = family.config_from_dict(text)
    spec = {}
    for name, (shape, init) in family.synthetic_spec(cfg).items():
        if name.endswith("linear_attn.norm.weight"):
            init = "uniform:0.7,1.3"
        elif name.endswith("norm.weight"):
            init = "normal:0.3"
        elif name.endswith(("A_log", "dt_bias")):
            init = "uniform:-1.5,1.5"
        elif name.endswith(("conv1d.weight", "in_proj_qkv.weight")):
            init = "normal:0.4"
        elif init == "normal":
            init = "normal:0.1"
        spec[name] = (shape, init)
    w = SyntheticWeights(spec, device=torch.device("cpu"), dtype=torch.float32, seed=5, progress=False)
    tensors = {(n if n.startswith("lm_head") else "model.language_model." + n[len("model."):]): w.get(n)
               for n in spec}
    dest.mkdir(parents=True, exist_ok=True)
    save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
    config = {"architectures": ["Qwen3_5MoeForConditionalGeneration"], "model_type": "qwen3_5_moe",
              "text_config": {**text, "layer_types": list(cfg.layer_types)}, "tie_word_embeddings": False}
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    write_tiny_tokenizer(dest, style="chatml")
    return dest


def tiny_checkpoint(dest: Path) -> tuple[Path, str]:
    try:
        from tests.qwen36_factory import write_checkpoint

        return write_checkpoint(dest, "fused", seed=5), "transformers factory (fused layout)"
    except Exception as exc:  # noqa: BLE001 - any failure of this machine's transformers: fall back
        print(f"factory failed ({type(exc).__name__}: {exc}); using the synthetic checkpoint", flush=True)
        return write_synthetic_checkpoint(dest / "synthetic"), "synthetic spec (fallback)"


def compare_devices(path: Path, devices: tuple[str, str], *, prompt_len: int = 100, steps: int = 8,
                    tol: float = 1e-3) -> dict[str, Any]:
    """fp32 logits of imp on two devices for the same checkpoint (decode follows device 0's argmax)."""
    from imp_core.plugin.manager import load_plugins
    from imp_core.run.session import load_session
    from imp_core.settings.resolve import load_settings

    plugins = load_plugins(env={})
    rows: dict[str, list[torch.Tensor]] = {}
    for dev in dict.fromkeys(devices):
        resolved = load_settings(cli_flags={"runtime.device": dev, "runtime.dtype": "float32"}, env={},
                                 user_config=Path("/nonexistent/imp.toml"))
        model = load_session(path, resolved, plugins, progress=False).model
        ids = torch.randint(3, model.cfg.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(11))
        cache = model.new_cache(1, prompt_len + steps + 1)
        out = [model.forward(ids.to(dev), torch.arange(prompt_len, device=dev), cache, last_only=True)[:, -1].cpu()]
        for i in range(steps):
            tok = (rows[devices[0]] if dev != devices[0] else out)[i].argmax(-1, keepdim=True)
            out.append(model.forward(tok.to(dev), torch.tensor([prompt_len + i], device=dev), cache)[:, -1].cpu())
        rows[dev] = out
    a, b = rows[devices[0]], rows[devices[-1]]
    diffs = [(x - y).abs().max().item() for x, y in zip(a, b)]
    return {"devices": " vs ".join(devices), "prompt_tokens": prompt_len, "decode_steps": steps,
            "prefill_max_abs_diff": diffs[0], "decode_max_abs_diff": max(diffs[1:]),
            "logit_scale": a[0].abs().max().item(), "tolerance": tol, "passed": max(diffs) < tol}


def cli_run(path: Path, device: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "imp_core.cli", "run", "--model", str(path), "--device", device,
                           "--prompt", "Tell me about the sea.", "-n", "16", "--seed", "1"],
                          capture_output=True, text=True, timeout=300)
    return {"returncode": proc.returncode, "stderr_tail": proc.stderr[-600:]}


# -- 2. full shape ---------------------------------------------------------------------------------
def decode_bytes(family, cfg, spec: dict, dtype: torch.dtype, context: int) -> dict[str, int]:
    """Bytes one decode step must read at ``context`` tokens of context."""
    size = torch.empty(0, dtype=dtype).element_size()
    weights = 0
    for name, (shape, _) in spec.items():
        n = 1
        for d in shape:
            n *= d
        if name == "model.embed_tokens.weight":
            n = shape[1]  # one row
        elif ".mlp.experts." in name:
            n = n * cfg.num_experts_per_tok // cfg.num_experts
        weights += n * size
    kv = family.cache_bytes_per_token(cfg, dtype) * context
    state = 2 * family.state_bytes_per_sequence(cfg, dtype)  # read and written back
    return {"active_weights": weights, "kv_read": kv, "deltanet_state_rw": state, "total": weights + kv + state}


def full_shape(preset: dict, device: str, dtype: torch.dtype, *, prefill: int, decode: int,
               seed: int = 0) -> dict[str, Any]:
    from imp_core.run.generator import Generator
    from imp_core.run.sampling import Sampler, SamplingParams
    from imp_core.model.synthetic import SyntheticWeights
    from imp_qwen36.family import Qwen36Family

    dev = torch.device(device)
    cuda = dev.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    family = Qwen36Family()
    cfg = family.config_from_dict(preset)
    spec = family.synthetic_spec(cfg)
    w = SyntheticWeights(spec, device=dev, dtype=dtype, seed=seed, progress=False)
    t0 = time.perf_counter()
    model = family.build(cfg, w)
    w.finish()
    sync()
    build_s = time.perf_counter() - t0
    gen = Generator(model, context=prefill + decode + 8)
    ids = torch.randint(3, cfg.vocab_size, (prefill,), generator=torch.Generator().manual_seed(seed)).tolist()
    sampler = Sampler(SamplingParams(temperature=0.0), vocab_size=cfg.vocab_size, device=dev)
    gen.generate(ids[:80], sampler, max_tokens=3, eos_ids=())  # warm-up: both DeltaNet forms, MoE strategies
    gen.reset()
    sync()
    out, stats = gen.generate(ids, sampler, max_tokens=decode, eos_ids=())
    decode_tps = (stats.generated_tokens - 1) / stats.decode_seconds
    need = decode_bytes(family, cfg, spec, dtype, prefill + decode // 2)
    res: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev) if cuda else "cpu", "dtype": str(dtype).replace("torch.", ""),
        "weights_GB": w.nbytes / 1e9, "build_s": build_s,
        "prefill_tokens": prefill, "prefill_s": stats.prefill_seconds,
        "prefill_tok_s": prefill / stats.prefill_seconds,
        "decode_tokens": stats.generated_tokens, "decode_tok_s": decode_tps,
        "decode_bytes_per_token_GB": need["total"] / 1e9,
        "of_which_active_weights_GB": need["active_weights"] / 1e9,
        "of_which_kv_and_state_GB": (need["kv_read"] + need["deltanet_state_rw"]) / 1e9,
        "achieved_GB_s": need["total"] * decode_tps / 1e9,
        "all_tokens_finite": True,
    }
    if cuda:
        bw = measure_copy_bandwidth()
        res.update(peak_mem_GB=torch.cuda.max_memory_allocated() / 1e9, copy_bw_GB_s=bw / 1e9,
                   fraction_of_copy_bw=need["total"] * decode_tps / bw,
                   fraction_of_4_28_TB_s=need["total"] * decode_tps / 4.28e12)
    logits = gen.decode_step()
    res["all_tokens_finite"] = bool(torch.isfinite(logits).all().item()) and len(out) == stats.generated_tokens
    del model, w, gen
    if cuda:
        torch.cuda.empty_cache()
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--skip-full", action="store_true", help="only the tiny checkpoint checks")
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="no GPU: compare cpu with cpu and run the full-shape part at the mini preset")
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--decode", type=int, default=32)
    args = ap.parse_args()
    from imp_qwen36.presets import QWEN3_6_35B_A3B, QWEN3_6_MINI

    dry = args.cpu_dry_run
    if not dry and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu-dry-run for the CPU-only parts", flush=True)
        return 2
    device = "cpu" if dry else "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False  # the causal conv runs through cuDNN

    results: dict[str, Any] = {"transformers_reference_h200": TRANSFORMERS_H200}
    with tempfile.TemporaryDirectory() as tmp:
        ck, source = tiny_checkpoint(Path(tmp) / "qwen36")
        res = compare_devices(ck, ("cpu", device))
        res["checkpoint"] = source
        results["tiny_cpu_vs_cuda"] = res
        print(f"qwen36 tiny: {res['devices']} (fp32)\n" + table(res), flush=True)
        results["cli"] = cli_run(ck, device)
        print(f"imp run --device {device}: rc={results['cli']['returncode']}\n"
              f"{results['cli']['stderr_tail'][-400:]}", flush=True)
    if not args.skip_full:
        preset, name = (QWEN3_6_MINI, "qwen3.6-mini") if dry else (QWEN3_6_35B_A3B, "qwen3.6-35b-a3b")
        prefill, decode = (min(args.prefill, 100), min(args.decode, 4)) if dry else (args.prefill, args.decode)
        res = full_shape(preset, device, torch.bfloat16, prefill=prefill, decode=decode)
        res["preset"] = name
        results["full_shape_bf16"] = res
        print(f"{name}, random bf16, reference path\n" + table(res), flush=True)
        print("transformers 5.17 on the H200 (measured 2026-11-26)\n" + table(TRANSFORMERS_H200), flush=True)
    write_json(args.out, "smoke_qwen36.json", results)
    ok = results["tiny_cpu_vs_cuda"]["passed"] and results["cli"]["returncode"] == 0
    ok = ok and results.get("full_shape_bf16", {}).get("all_tokens_finite", True)
    print("QWEN36 SMOKE", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
