"""Real-shape decode on the fast path, on the GPU machine: random weights in each family's
published format mixes, bound to the kernels exactly as a checkpoint's are, graphs on, batch 1.

For each (family, format): build the model on the GPU from ``SyntheticWeights`` with the
family's ``FORMAT_MIXES`` entry, bind the fast path, then
- check: a short prefill through the reference forward, then a few teacher-forced decode steps
  through both the reference forward and the fast decoder, compared layer by layer exactly as
  ``imp check`` does (imp_core/fast/oracle.py);
- speed: prefill then greedy decode through the Generator with the fast decoder captured in a
  CUDA graph; decode tok/s, the weight bytes one token reads, achieved GB/s and the fraction of
  the copy bandwidth measured in the same run, peak memory.

    python3 tests/gpu/fast_decode.py --out $OUT [--models qwen36,gemma4,mistral] [--formats bf16,nvfp4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.gpu.smoke_common import measure_copy_bandwidth  # noqa: E402

FAMILIES = {
    "qwen36": ("imp_qwen36.family:Qwen36Family", "imp_qwen36.presets", "QWEN3_6_35B_A3B"),
    "gemma4": ("imp_gemma4.family:Gemma4Family", "imp_gemma4.presets", "GEMMA_4_26B_A4B"),
    "mistral": ("imp_mistral.family:MistralFamily", "imp_mistral.presets", "MISTRAL_SMALL_3_2_24B"),
}


def _load(dotted: str):
    import importlib

    mod, _, attr = dotted.partition(":")
    return getattr(importlib.import_module(mod), attr)


def build(name: str, fmt: str):
    import importlib

    from imp_core.model.synthetic import SyntheticWeights
    from imp_core.model.synthetic_quant import mix_formats

    fam_path, presets_mod, preset = FAMILIES[name]
    family = _load(fam_path)()
    presets = importlib.import_module(presets_mod)
    cfg = family.config_from_dict(getattr(presets, preset))
    w = SyntheticWeights(family.synthetic_spec(cfg), device=torch.device("cuda"), dtype=torch.bfloat16, seed=1,
                         progress=False, formats=mix_formats(presets.FORMAT_MIXES[fmt]))
    model = family.build(cfg, w)
    w.finish()
    choose_attention(model)
    return family, cfg, model


def choose_attention(model) -> None:
    """The attention backend of every layer as a run's plan chooses it (fast path on)."""
    from imp_core.plugin import policy
    from imp_core.plugin.manager import load_plugins
    from imp_core.settings.resolve import Settings

    plugins = load_plugins(env={})
    layers = model.info.attention_layers
    choices = policy.choose_attention(plugins.hook, layers, Settings(), model.device, plugins.attention,
                                      torch.bfloat16, fast_path=True)
    model.set_attention_backends({ly.index: plugins.attention[c.backend] for ly, c in zip(layers, choices)})


def check(model, fast, steps: int = 3) -> dict:
    """imp check's comparison (fast/oracle.py) at the real shape: per-layer and logit errors over
    teacher-forced decode steps, routing agreement, greedy divergence."""
    from imp_core.fast.oracle import compare

    report = compare(model, fast, list(range(100, 116)), steps)
    worst = max(report.rows, key=lambda r: r.rel / r.tol)
    return {"passed": report.ok, "worst_row": worst.what, "worst_rel": worst.rel, "worst_tol": worst.tol,
            "logits_rel": report.rows[-1].rel, "routing": f"{report.routes_same}/{report.routes_total}",
            "greedy_divergence": report.first_divergence, "table": report.table()}


def speed(model, fast, vocab: int, prefill: int, decode: int) -> dict:
    from imp_core.fast.sampling import fast_sampler
    from imp_core.run.generator import Generator
    from imp_core.run.sampling import SamplingParams

    gen = Generator(model, context=prefill + decode + 8, cuda_graphs=True, decoder=fast.decoder)
    sampler, how = fast_sampler(SamplingParams(temperature=0.0, seed=0), vocab, model.device)
    ids = list(range(100, 100 + prefill))
    gen.generate(ids[:16], sampler, max_tokens=4, eos_ids=())  # warm-up: capture the graph
    gen.reset()
    sampler.reset()
    torch.cuda.synchronize()
    _, stats = gen.generate(ids, sampler, max_tokens=decode, eos_ids=())
    tps = (stats.generated_tokens - 1) / stats.decode_seconds
    return {"prefill_tokens": prefill, "prefill_tok_s": prefill / stats.prefill_seconds,
            "decode_tokens": stats.generated_tokens, "decode_tok_s": tps, "sampler": how}


def profile(model, fast, steps: int = 5) -> list[dict]:
    """GPU time per kernel over ``steps`` eager decode steps (CUPTI): name, launches per step,
    microseconds per step, share of the GPU-busy time."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    from imp_core.run.generator import Generator

    gen = Generator(model, context=64, decoder=fast.decoder)
    gen.prefill(list(range(100, 116)))
    gen.decode_step()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            gen.decode_step()
        torch.cuda.synchronize()
    rows = {}
    for ev in prof.events():
        if ev.device_type.name != "CUDA":
            continue
        r = rows.setdefault(ev.name[:90], [0, 0.0])
        r[0] += 1
        r[1] += ev.device_time_total if hasattr(ev, "device_time_total") else ev.cuda_time_total
    total = sum(v[1] for v in rows.values()) or 1.0
    out = [{"kernel": k, "launches_per_step": n / steps, "us_per_step": t / steps, "share": t / total}
           for k, (n, t) in sorted(rows.items(), key=lambda kv: -kv[1][1])]
    return out[:25]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("/tmp/fast-out"))
    ap.add_argument("--models", default="mistral,qwen36,gemma4")
    ap.add_argument("--formats", default="bf16,nvfp4")
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--profile", action="store_true", help="per-kernel GPU time of eager decode steps")
    args = ap.parse_args()
    import imp_kernels.compat  # noqa: F401
    from imp_core.fast.model import bind_fast_path

    args.out.mkdir(parents=True, exist_ok=True)
    bw = measure_copy_bandwidth()
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "copy_bw_GB_s": bw / 1e9,
               "runs": []}
    for name in args.models.split(","):
        for fmt in args.formats.split(","):
            row = {"model": name, "format": fmt}
            t0 = time.perf_counter()
            try:
                family, cfg, model = build(name, fmt)
                torch.cuda.synchronize()
                row["build_s"] = time.perf_counter() - t0
                fast = bind_fast_path(family, model)
                row["bind_warm_s"] = fast.warm_seconds
                row["plan"] = fast.plan
                nbytes = fast.model.weight_bytes_per_token()
                row["weight_bytes_per_token_GB"] = nbytes / 1e9
                if not args.no_check:
                    row["check"] = check(model, fast)
                row.update(speed(model, fast, cfg.vocab_size, args.prefill, args.decode))
                row["achieved_GB_s"] = nbytes * row["decode_tok_s"] / 1e9
                row["fraction_of_copy_bw"] = nbytes * row["decode_tok_s"] / bw
                row["peak_mem_GB"] = torch.cuda.max_memory_allocated() / 1e9
                if args.profile:
                    row["profile"] = profile(model, fast)
                    busy = sum(p["us_per_step"] for p in row["profile"])
                    print(f"  profile ({name} {fmt}): top-25 kernels {busy:.0f} us/step of GPU time vs "
                          f"{1e6 / row['decode_tok_s']:.0f} us/step replayed", flush=True)
                    for p in row["profile"][:12]:
                        print(f"    {p['us_per_step']:8.1f} us {p['launches_per_step']:6.1f}x  {p['share']:5.1%}  "
                              f"{p['kernel'][:70]}", flush=True)
            except Exception as exc:  # keep going: one failing row must not hide the others
                row["error"] = f"{type(exc).__name__}: {exc}"
                row["traceback"] = traceback.format_exc()[-3000:]
            row["total_s"] = time.perf_counter() - t0
            print(json.dumps({k: v for k, v in row.items() if k not in ("plan", "traceback", "profile")}), flush=True)
            if "traceback" in row:
                print(row["traceback"], flush=True)
            results["runs"].append(row)
            (args.out / "fast_decode.json").write_text(json.dumps(results, indent=2, default=str))
            model = fast = family = None  # free this row's weights before the next one
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    return 0


if __name__ == "__main__":
    sys.exit(main())
