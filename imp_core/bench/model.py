"""The model a benchmark runs: a checkpoint through the session loader, or a family preset with
random weights in a published format mix built on the device (``SyntheticWeights``, packed
tensors as the checkpoint loader makes them), then the same policy decisions and fast-path
binding a run makes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from imp_core.bench.presets import Preset
from imp_core.bench.roofline import active_weight_bytes, sync
from imp_core.errors import ConfigError
from imp_core.plugin import policy


@dataclass
class BenchModel:
    model: Any
    fast: Any  # FastPath or None
    weight_bytes: int  # weight bytes one decoded token reads
    load_seconds: float
    plan: list[tuple[str, str]] = field(default_factory=list)
    vocab: int = 0


def _spec_bytes(spec: dict, formats, dtype: torch.dtype) -> dict[str, tuple[tuple[int, ...], int]]:
    from imp_core.model.synthetic_quant import GGUF_BLOCK

    size = torch.empty(0, dtype=dtype).element_size()
    out = {}
    for name, (shape, _) in spec.items():
        n = 1
        for d in shape:
            n *= d
        q = formats(name, shape) if formats else None
        if q == "nvfp4":
            nbytes = n // 2 + n // 16
        elif q == "fp8":
            nbytes = n
        elif q and q.startswith("gguf:"):
            elems, blk = GGUF_BLOCK[q.split(":", 1)[1]]
            nbytes = n // elems * blk
        else:
            nbytes = n * size
        out[name] = (tuple(shape), nbytes)
    return out


def _later_phases(plugins, model, info, spec, formats, settings, device, dtype, fast: bool, reserve: int
                  ) -> list[tuple[str, str]]:
    """Phase 3b on the preset's packed weights, decided by the same policy as for a checkpoint
    (3a and 3-MoE happen at fast-path binding); returns the plan lines."""
    from dataclasses import replace

    from imp_core.model.prefill_forms import build_prefill_forms
    from imp_core.run.generator import PREFILL_CHUNK
    from imp_core.run.prefill_plan import prefill_summary

    used = {formats(n, shape) for n, (shape, _) in spec.items()} - {None} if formats else set()
    info = replace(info, quant_formats=frozenset(used))
    lines = []
    for d in policy.plan_phases(plugins.hook, info, settings, device, fast):
        if d.phase == "3b" and d.enabled and device.type == "cuda":
            lines.append(("phase 3b", build_prefill_forms(model, roles=d.roles, dtype=dtype, device=device,
                                                          reserve=reserve)))
        elif d.phase == "3b":
            lines.append(("phase 3b", f"{'on' if d.enabled else 'off'} - {d.reason}"
                                      + (" (dense copies are made on CUDA only)" if d.enabled else "")))
    lines.append(("prefill", prefill_summary(model, PREFILL_CHUNK)))
    return lines


def build_preset(plugins, preset: Preset, fmt: str, settings, device: torch.device, dtype: torch.dtype,
                 path: str, *, progress: bool = True, context: int = 0) -> BenchModel:
    """``context``: the longest sequence the benchmark will hold (its cache is reserved before
    Phase 3b decides on dense prefill copies)."""
    from imp_core.fast.model import bind_fast_path
    from imp_core.model.synthetic import SyntheticWeights
    from imp_core.model.synthetic_quant import mix_formats
    from imp_core.run.session import fast_path_reasons

    family = preset.family
    mixes = family.format_mixes()
    if fmt not in mixes and fmt != "bf16":
        raise ConfigError(f"preset '{preset.name}' has no format '{fmt}' (known: {', '.join(mixes) or 'bf16'})")
    formats = mix_formats(mixes[fmt]) if mixes.get(fmt) else None
    cfg = family.config_from_dict(preset.config)
    info = family.model_info(cfg, None)
    t0 = time.perf_counter()
    spec = family.synthetic_spec(cfg)
    w = SyntheticWeights(spec, device=device, dtype=dtype, seed=0, progress=progress, formats=formats)
    model = family.build(cfg, w)
    w.finish()
    reasons = ["--path reference"] if path == "reference" else \
        fast_path_reasons(plugins, family, info, settings, device, dtype)
    if path == "fast" and reasons:
        raise ConfigError("--path fast, but the decode fast path cannot run: " + "; ".join(reasons))
    choices = policy.choose_attention(plugins.hook, info.attention_layers, settings, device, plugins.attention,
                                      dtype, not reasons)
    model.set_attention_backends({ly.index: plugins.attention[c.backend]
                                  for ly, c in zip(info.attention_layers, choices)})
    reserve = family.cache_bytes(cfg, dtype, context) if context else 0
    phase_lines = _later_phases(plugins, model, info, spec, formats, settings, device, dtype, not reasons, reserve)
    fast = bind_fast_path(family, model) if not reasons else None
    sync(device)
    plan = [("model", f"preset {preset.name} ({info.architecture}), random weights, format {fmt}"),
            ("decode path", "fast" if fast else "reference - " + "; ".join(reasons)), *phase_lines]
    plan += fast.plan if fast else []
    active = fast.model.weight_bytes_per_token() if fast else \
        active_weight_bytes(_spec_bytes(spec, formats, dtype), info.num_experts, info.experts_per_token)
    return BenchModel(model, fast, active, time.perf_counter() - t0, plan, info.vocab_size)


def load_checkpoint(plugins, path, resolved, decode_path: str, *, progress: bool = True) -> BenchModel:
    from imp_core.run.session import load_session

    if decode_path == "reference":
        resolved = resolved.with_overrides({"runtime.fast_path": "off"}, "--path reference")
    elif decode_path == "fast":
        resolved = resolved.with_overrides({"runtime.fast_path": "on"}, "--path fast")
    t0 = time.perf_counter()
    session = load_session(path, resolved, plugins, progress=progress)
    insp = session.inspection
    sync(insp.device)
    if session.fast is not None:
        active = session.fast.model.weight_bytes_per_token()
    else:
        tensors = {t.name: (tuple(t.shape), t.nbytes) for t in insp.checkpoint.tensors.values()}
        active = active_weight_bytes(tensors, insp.info.num_experts, insp.info.experts_per_token)
    return BenchModel(session.model, session.fast, active, time.perf_counter() - t0,
                      [("model", f"{path} ({insp.info.architecture})"),
                       ("decode path", "fast" if session.fast else "reference - " + "; ".join(insp.fast_path_reasons))]
                      + (session.fast.plan if session.fast else []), insp.info.vocab_size)
