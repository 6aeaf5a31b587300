"""GPU smoke for the Gemma-4 family (run on the device machine after tests/gpu/bootstrap.sh).

1. The tiny published-layout checkpoint (tests/gemma4_factory.py; if this machine's transformers
   cannot write it, the same tensors from the family's synthetic spec): imp on cuda vs imp on
   cpu, fp32 logits of a 40-token prefill (5x the sliding window) and 8 cached decode steps,
   tolerance 2e-3 absolute on logits of ~25 (TF32 off, so fp32 means fp32; the tiny random
   model amplifies rounding ~100x, see tests/test_gemma4_parity.py). Then the decode step
   captured in a CUDA graph and replayed for 8 steps against eager decode (capture-readiness),
   and `imp run --device cuda` end to end.
2. gemma-4-26B-A4B shape with random bf16 weights built on the GPU (~50.5 GB): prefill 512
   tokens, decode 32 greedy tokens with the engine's Generator (reference path, not the fast
   path); tok/s, weight bytes, bytes one decode step must read (active weights: attention, the
   dense MLP, the router, 8 of 128 experts per layer, the tied lm_head; plus the KV it attends
   over), achieved GB/s and its fraction of the measured copy bandwidth and of 4.28 TB/s,
   printed beside transformers' figures on the same H200 (TRANSFORMERS_H200).

    python3 tests/gpu/smoke_gemma4.py --out $OUT              # GPU machine (~2 min, ~55 GB)
    python3 tests/gpu/smoke_gemma4.py --out DIR --cpu-dry-run  # any machine: all on cpu, mini shape
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from tests.gpu.smoke_common import measure_copy_bandwidth, table, write_json  # noqa: E402

TINY_TOL = 2e-3
TRANSFORMERS_H200 = {  # measured 2026-11-26, HF transformers 5.17 on the H200, bf16, random weights
    "hf_eager_decode_tok_s": 12.0, "hf_eager_prefill_tok_s (2048-token forward)": 1333.0,
    "hf_static_compiled_decode_tok_s": "89-100", "hf_bytes_per_token_GB": "~7.6",
}


# -- 1. tiny checkpoint -----------------------------------------------------------------------------
def tiny_checkpoint(dest: Path) -> tuple[Path, str]:
    try:
        from tests.gemma4_factory import write_checkpoint

        path = write_checkpoint(dest / "hf", "gemma4", seed=3)
        _load(path, "cpu")  # this machine's transformers may write other names or config keys
        return path, "transformers factory (published layout)"
    except Exception as exc:  # noqa: BLE001 - any failure of this machine's transformers: fall back
        print(f"factory failed ({type(exc).__name__}: {exc}); using the synthetic checkpoint", flush=True)
        from tests.gemma4_factory import write_synthetic_checkpoint

        return write_synthetic_checkpoint(dest / "synthetic", seed=3), "synthetic spec (fallback)"


def _load(path: Path, device: str):
    from imp_core.plugin.manager import load_plugins
    from imp_core.run.session import load_session
    from imp_core.settings.resolve import load_settings

    resolved = load_settings(cli_flags={"runtime.device": device, "runtime.dtype": "float32"}, env={},
                             user_config=Path("/nonexistent/imp.toml"))
    return load_session(path, resolved, load_plugins(env={}), progress=False).model


def compare_devices(path: Path, devices: tuple[str, str], *, prompt_len: int = 40, steps: int = 8,
                    tol: float = TINY_TOL) -> dict[str, Any]:
    """fp32 logits of imp on two devices for the same checkpoint (decode follows device 0's argmax)."""
    rows: dict[str, list[torch.Tensor]] = {}
    for dev in dict.fromkeys(devices):
        model = _load(path, dev)
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


def captured_decode(path: Path, device: str, *, prompt_len: int = 20, steps: int = 8) -> dict[str, Any]:
    """The T=1 forward captured once in a CUDA graph, replayed for ``steps`` tokens vs eager decode."""
    if device != "cuda":
        return {"skipped": "needs cuda", "passed": True}
    model = _load(path, device)
    ids = torch.randint(3, model.cfg.vocab_size, (1, prompt_len),
                        generator=torch.Generator().manual_seed(5)).to(device)
    pos = torch.arange(prompt_len, device=device)
    graph_cache, eager_cache = model.new_cache(1, 64), model.new_cache(1, 64)
    first = model.forward(ids, pos, graph_cache, last_only=True)
    model.forward(ids, pos, eager_cache, last_only=True)
    tok = torch.zeros((1, 1), dtype=torch.long, device=device)
    step_pos = torch.full((1,), prompt_len, dtype=torch.long, device=device)
    tok.copy_(first[:, -1].argmax(-1).view(1, 1))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up writes the same K/V the first replay writes again
        for _ in range(2):
            model.forward(tok, step_pos, graph_cache, last_only=True)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        logits = model.forward(tok, step_pos, graph_cache, last_only=True)
    worst = 0.0
    for _ in range(steps):
        graph.replay()
        ref = model.forward(tok.clone(), step_pos.clone(), eager_cache, last_only=True)
        worst = max(worst, (logits - ref).abs().max().item())
        tok.copy_(ref[:, -1].argmax(-1).view(1, 1))
        step_pos.add_(1)
    torch.cuda.synchronize()
    return {"steps": steps, "max_abs_diff_vs_eager": worst, "passed": worst < 1e-4}


def cli_run(path: Path, device: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "imp_core.cli", "run", "--model", str(path), "--device", device,
                           "--prompt", "Tell me about the sea.", "-n", "16", "--seed", "1"],
                          capture_output=True, text=True, timeout=300)
    return {"returncode": proc.returncode, "stderr_tail": proc.stderr[-600:]}


# -- 2. full shape ---------------------------------------------------------------------------------
def decode_bytes(family, cfg, spec: dict, dtype: torch.dtype, context: int) -> dict[str, int]:
    """Bytes one decode step must read at ``context`` tokens of context (bf16 weights, KV)."""
    size = torch.empty(0, dtype=dtype).element_size()
    weights = 0
    for name, (shape, _) in spec.items():
        n = torch.Size(shape).numel()
        if name == "model.embed_tokens.weight":  # the lookup reads one row; a tied lm_head all of it
            n = shape[1] + (n if cfg.tie_word_embeddings else 0)
        elif ".experts." in name:
            n = n * cfg.top_k_experts // cfg.num_experts
        weights += n * size
    kv = sum(2 * layer.num_kv_heads * layer.head_dim * min(context, layer.sliding_window or context)
             for layer in cfg.layers) * size
    return {"active_weights": weights, "kv_read": kv, "total": weights + kv}


def full_shape(preset: dict, device: str, dtype: torch.dtype, *, prefill: int, decode: int,
               seed: int = 0) -> dict[str, Any]:
    from imp_core.run.generator import Generator
    from imp_core.run.sampling import Sampler, SamplingParams
    from imp_core.model.synthetic import SyntheticWeights
    from imp_gemma4.family import Gemma4Family

    dev = torch.device(device)
    cuda = dev.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    family = Gemma4Family()
    cfg = family.config_from_dict(preset)
    spec = family.synthetic_spec(cfg)
    w = SyntheticWeights(spec, device=dev, dtype=dtype, seed=seed, progress=False)
    t0 = time.perf_counter()
    model = family.build(cfg, w)
    w.finish()
    sync()
    build_s = time.perf_counter() - t0
    context = prefill + decode + 8
    gen = Generator(model, context=context)
    ids = torch.randint(3, cfg.vocab_size, (prefill,), generator=torch.Generator().manual_seed(seed)).tolist()
    sampler = Sampler(SamplingParams(temperature=0.0), vocab_size=cfg.vocab_size, device=dev)
    gen.generate(ids[:64], sampler, max_tokens=3, eos_ids=())  # warm-up: both MoE strategies, attention paths
    gen.reset()
    sync()
    out, stats = gen.generate(ids, sampler, max_tokens=decode, eos_ids=())
    decode_tps = (stats.generated_tokens - 1) / stats.decode_seconds
    need = decode_bytes(family, cfg, spec, dtype, prefill + decode // 2)
    res: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev) if cuda else "cpu", "dtype": str(dtype).replace("torch.", ""),
        "weights_GB": w.nbytes / 1e9, "build_s": build_s,
        "kv_cache_GB": gen.cache.nbytes / 1e9, "kv_bytes_per_token": family.cache_bytes_per_token(cfg, dtype),
        "prefill_tokens": prefill, "prefill_s": stats.prefill_seconds,
        "prefill_tok_s": prefill / stats.prefill_seconds,
        "decode_tokens": stats.generated_tokens, "decode_tok_s": decode_tps,
        "decode_bytes_per_token_GB": need["total"] / 1e9,
        "of_which_active_weights_GB": need["active_weights"] / 1e9,
        "of_which_kv_GB": need["kv_read"] / 1e9,
        "achieved_GB_s": need["total"] * decode_tps / 1e9,
    }
    if cuda:
        bw = measure_copy_bandwidth()
        res.update(peak_mem_GB=torch.cuda.max_memory_allocated() / 1e9, copy_bw_GB_s=bw / 1e9,
                   fraction_of_copy_bw=need["total"] * decode_tps / bw,
                   fraction_of_4_28_TB_s=need["total"] * decode_tps / 4.28e12)
    logits = gen.decode_step()
    res["distinct_tokens"] = len(set(out))
    res["all_tokens_finite"] = bool(torch.isfinite(logits).all().item()) and len(out) == stats.generated_tokens
    del model, w, gen, logits
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
    from imp_gemma4.presets import GEMMA_4_26B_A4B, GEMMA_4_MINI

    dry = args.cpu_dry_run
    if not dry and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu-dry-run for the CPU-only parts", flush=True)
        return 2
    device = "cpu" if dry else "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    results: dict[str, Any] = {"transformers_reference_h200": TRANSFORMERS_H200}
    with tempfile.TemporaryDirectory() as tmp:
        ck, source = tiny_checkpoint(Path(tmp))
        res = compare_devices(ck, ("cpu", device))
        res["checkpoint"] = source
        results["tiny_cpu_vs_cuda"] = res
        print(f"gemma4 tiny: {res['devices']} (fp32)\n" + table(res), flush=True)
        results["captured_decode"] = captured_decode(ck, device)
        print("decode step in a CUDA graph vs eager\n" + table(results["captured_decode"]), flush=True)
        results["cli"] = cli_run(ck, device)
        print(f"imp run --device {device}: rc={results['cli']['returncode']}\n"
              f"{results['cli']['stderr_tail'][-400:]}", flush=True)
    if not args.skip_full:
        preset, name = (GEMMA_4_MINI, "gemma-4-mini") if dry else (GEMMA_4_26B_A4B, "gemma-4-26b-a4b")
        prefill, decode = (min(args.prefill, 100), min(args.decode, 4)) if dry else (args.prefill, args.decode)
        res = full_shape(preset, device, torch.bfloat16, prefill=prefill, decode=decode)
        res["preset"] = name
        results["full_shape_bf16"] = res
        print(f"{name}, random bf16, reference path\n" + table(res), flush=True)
        print("transformers 5.17 on the H200 (measured 2026-11-26)\n" + table(TRANSFORMERS_H200), flush=True)
    write_json(args.out, "smoke_gemma4.json", results)
    ok = results["tiny_cpu_vs_cuda"]["passed"] and results["captured_decode"]["passed"]
    ok = ok and results["cli"]["returncode"] == 0
    ok = ok and results.get("full_shape_bf16", {}).get("all_tokens_finite", True)
    print("GEMMA4 SMOKE", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
