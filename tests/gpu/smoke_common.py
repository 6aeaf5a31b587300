"""Shared pieces of the GPU smoke scripts (run on the device machine, not collected by pytest).

- ``compare_devices``: the same checkpoint through imp on the CPU and on CUDA, fp32 logits of a
  prefill and a few cached decode steps, max |diff| against a stated tolerance.
- ``full_shape_smoke``: random bf16 weights at a real model shape built directly on the GPU;
  prefill N tokens then decode M greedy tokens with the engine's Generator; tok/s, bytes per
  decode token and the fraction of the measured copy bandwidth.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

COPY_BW_FALLBACK = 4.28e12  # measured 2026-11-26: H200 device-to-device copy (bytes read + written)


def measure_copy_bandwidth(nbytes: int = 2 << 30) -> float:
    a = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    reps = 10
    for _ in range(reps):
        b.copy_(a)
    end.record()
    torch.cuda.synchronize()
    secs = start.elapsed_time(end) / 1e3 / reps
    del a, b
    torch.cuda.empty_cache()
    return 2 * nbytes / secs


def _settings(device: str, dtype: str, flags: dict | None = None):
    from imp_core.settings.resolve import load_settings

    return load_settings(cli_flags={"runtime.device": device, "runtime.dtype": dtype, **(flags or {})},
                         env={}, user_config=Path("/nonexistent/imp.toml"))


def compare_devices(path: Path, *, prompt_len: int = 48, steps: int = 8, tol: float = 1e-3,
                    flags: dict | None = None) -> dict[str, Any]:
    """fp32 logits of imp on cpu vs cuda for the same checkpoint."""
    from imp_core.plugin.manager import load_plugins
    from imp_core.run.session import load_session

    plugins = load_plugins(env={})
    out: dict[str, Any] = {}
    logits = {}
    for dev in ("cpu", "cuda"):
        s = load_session(path, _settings(dev, "float32", flags), plugins, progress=False)
        m = s.model
        g = torch.Generator().manual_seed(11)
        ids = torch.randint(3, s.inspection.info.vocab_size, (1, prompt_len), generator=g)
        cache = m.new_cache(1, prompt_len + steps + 1)
        rows = [m.forward(ids.to(dev), torch.arange(prompt_len, device=dev), cache, last_only=True)[:, -1].cpu()]
        tok = rows[0].argmax(-1, keepdim=True)
        for i in range(steps):
            lg = m.forward(tok.to(dev), torch.tensor([prompt_len + i], device=dev), cache)[:, -1].cpu()
            rows.append(lg)
            tok = lg.argmax(-1, keepdim=True) if dev == "cpu" else logits["cpu"][i + 1].argmax(-1, keepdim=True)
        logits[dev] = rows
    diffs = [(a - b).abs().max().item() for a, b in zip(logits["cpu"], logits["cuda"])]
    out.update(prefill_max_abs_diff=diffs[0], decode_max_abs_diff=max(diffs[1:]), tolerance=tol,
               passed=max(diffs) < tol)
    return out


def full_shape_smoke(family: Any, preset: dict, *, prefill: int = 512, decode: int = 32,
                     active_bytes_per_token: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Random bf16 weights at a real shape on cuda; time prefill and greedy decode."""
    from imp_core.run.generator import Generator
    from imp_core.run.sampling import Sampler, SamplingParams
    from imp_core.model.synthetic import SyntheticWeights

    cfg = family.config_from_dict(preset)
    spec = family.synthetic_spec(cfg)
    w = SyntheticWeights(spec, device=torch.device("cuda"), dtype=torch.bfloat16, seed=seed, progress=False)
    t0 = time.perf_counter()
    model = family.build(cfg, w)
    w.finish()
    torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    weight_bytes = w.nbytes
    gen = Generator(model, context=prefill + decode + 8)
    ids = torch.randint(3, cfg.vocab_size, (prefill,), generator=torch.Generator().manual_seed(seed)).tolist()
    sampler = Sampler(SamplingParams(temperature=0.0), vocab_size=cfg.vocab_size, device=torch.device("cuda"))
    # warm-up (allocator, kernels), then the measured run on a fresh cache
    gen.generate(ids[:32], sampler, max_tokens=2, eos_ids=())
    gen.reset()
    torch.cuda.synchronize()
    out_tokens, stats = gen.generate(ids, sampler, max_tokens=decode, eos_ids=())
    decode_tps = (stats.generated_tokens - 1) / stats.decode_seconds
    res: dict[str, Any] = {
        "weights_GB": weight_bytes / 1e9, "build_s": build_s,
        "prefill_tokens": prefill, "prefill_tok_s": prefill / stats.prefill_seconds,
        "decode_tokens": stats.generated_tokens, "decode_tok_s": decode_tps,
        "peak_mem_GB": torch.cuda.max_memory_allocated() / 1e9,
    }
    if active_bytes_per_token:
        bw = measure_copy_bandwidth()
        res.update(bytes_per_token_GB=active_bytes_per_token / 1e9,
                   achieved_GB_s=active_bytes_per_token * decode_tps / 1e9,
                   copy_bw_GB_s=bw / 1e9, fraction_of_copy_bw=active_bytes_per_token * decode_tps / bw)
    del model, w, gen
    torch.cuda.empty_cache()
    return res


def write_json(out_dir: Path, name: str, data: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / name).write_text(json.dumps(data, indent=2, default=str))


def table(rows: dict[str, Any]) -> str:
    width = max(len(k) for k in rows)
    return "\n".join(f"  {k.ljust(width)}  {v:.4g}" if isinstance(v, float) else f"  {k.ljust(width)}  {v}"
                     for k, v in rows.items())
