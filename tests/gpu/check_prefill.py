"""Prefill on the GPU against the reference prefill (run on the device machine, not by pytest).

Each family at its real widths, cut to a few layers (one period of its layer pattern), random
weights in a published format mix. The engine's prefill (span-trimmed KV, unmasked causal SDPA
for a fresh chunk, grouped-GEMM MoE, flash-linear-attention's DeltaNet kernel where installed,
Phase 3b's dense copies) is compared with the reference prefill (full masked cache, the expert
loop, the torch chunked rule, per-call dequantisation) on the same model: logits after a prompt
of two chunks and after one decode step (which reads the caches and states prefill left).
Tolerance: relative L2 error of the logits <= 2^-5 * sqrt(layers + 1) (bf16 activations,
fp32 accumulation in a different order, the bound imp check states in imp_core.fast.oracle).

    python3 tests/gpu/check_prefill.py --out $OUT [--tokens 3000] [--formats bf16,nvfp4]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from pathlib import Path

import torch

CUTS = {"qwen3.6-35b-a3b": {"num_hidden_layers": 4},
        "gemma-4-26b-a4b": {"num_hidden_layers": 6},
        "mistral-small-3.2-24b": {"num_hidden_layers": 2}}


@contextlib.contextmanager
def reference_prefill():
    """The reference prefill: expert loop, torch chunked rule, no span, no dense copies."""
    import imp_core.layers.moe as moe
    import imp_qwen36.deltanet as dn
    from imp_core.model.cache import LayerCaches

    saved = (moe.moe_strategy, dn.prefill_rule, LayerCaches.set_span)
    moe.moe_strategy = lambda n, dev, ok: saved[0](n, "cpu", False)
    dn.prefill_rule = lambda dev, ok: ("torch-chunk", "reference")
    LayerCaches.set_span = lambda self, span: None
    try:
        yield
    finally:
        moe.moe_strategy, dn.prefill_rule, LayerCaches.set_span = saved


def _dense_copies(model) -> list:
    from imp_core.layers.linear import Linear
    from imp_core.layers.moe import Experts
    from imp_core.model.walk import iter_instances

    return [o for o in iter_instances(model, (Linear, Experts)) if o.prefill_dense]


def run_one(plugins, name: str, fmt: str, tokens: int, chunk: int, device: torch.device) -> dict:
    from imp_core.bench.model import build_preset
    from imp_core.bench.presets import Preset, find_preset
    from imp_core.run.generator import Generator
    from imp_core.settings.resolve import load_settings

    base = find_preset(plugins, name)
    cfg = {**base.config, **CUTS.get(name, {})}
    if "layer_types" in cfg:
        cfg["layer_types"] = cfg["layer_types"][:cfg["num_hidden_layers"]]
    preset = Preset(name + "-cut", base.family, cfg)
    settings = load_settings(cli_flags={"runtime.device": device.type, "runtime.dtype": "bfloat16"}, env={},
                             user_config=Path("/nonexistent/imp.toml")).settings
    bm = build_preset(plugins, preset, fmt, settings, device, torch.bfloat16, "reference", progress=False)
    model = bm.model
    ids = torch.randint(0, bm.vocab, (tokens,), generator=torch.Generator().manual_seed(5)).tolist()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def prefill_then_step():
        gen = Generator(model, tokens + 8, prefill_chunk=chunk)
        sync()
        t0 = time.perf_counter()
        a = gen.prefill(ids).float()
        sync()
        secs = time.perf_counter() - t0
        gen.token_buf.fill_(7)
        b = gen.decode_step().float()
        return a, b, secs

    prefill_then_step()  # warm (fla's Triton kernels compile on first use)
    fast_a, fast_b, fast_s = prefill_then_step()
    copies = _dense_copies(model)
    saved = [(o, dict(o.prefill_dense)) for o in copies]
    for o in copies:
        o.prefill_dense.clear()
    with reference_prefill():
        ref_a, ref_b, ref_s = prefill_then_step()
    for o, d in saved:
        o.prefill_dense.update(d)
    layers = cfg["num_hidden_layers"]
    tol = 2 ** -5 * math.sqrt(layers + 1)
    err = [float((x - y).norm() / y.norm()) for x, y in ((fast_a, ref_a), (fast_b, ref_b))]
    ok = all(e <= tol for e in err) and bool(torch.isfinite(fast_a).all())
    return {"preset": name, "format": fmt, "layers": layers, "tokens": tokens, "chunk": chunk,
            "rel_err_prefill_logits": err[0], "rel_err_next_step": err[1], "tolerance": tol, "pass": ok,
            "engine_prefill_s": fast_s, "reference_prefill_s": ref_s, "dense_copies": len(copies),
            "plan": bm.plan}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokens", type=int, default=3000)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--presets", default=",".join(CUTS))
    ap.add_argument("--formats", default="bf16,nvfp4")
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the script (with the mini presets)")
    args = ap.parse_args()
    from imp_core.plugin.manager import load_plugins

    plugins = load_plugins(env={})
    rows = []
    for name in args.presets.split(","):
        for fmt in args.formats.split(","):
            try:
                row = run_one(plugins, name, fmt, args.tokens, args.chunk, torch.device(args.device))
            except Exception as exc:  # one line per failure, the table goes on
                row = {"preset": name, "format": fmt, "pass": False, "error": f"{type(exc).__name__}: {exc}"}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "plan"}), flush=True)
            if args.device == "cuda":
                torch.cuda.empty_cache()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "check_prefill.json").write_text(json.dumps(rows, indent=1))
    bad = [r for r in rows if not r["pass"]]
    print(f"prefill check: {len(rows) - len(bad)}/{len(rows)} pass")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
