"""NVIDIA ModelOpt exports (docs/formats.md, "NVFP4 from ModelOpt"): ``hf_quant_config.json`` and/or ``quant_method: modelopt``.

Per module: ``weight`` U8 + ``weight_scale`` F8_E4M3 + ``weight_scale_2`` F32 (NVFP4, the global
MULTIPLIES), or ``weight`` F8_E4M3 + ``weight_scale`` F32 (FP8 per-tensor / per-channel);
``input_scale``, ``k_scale``/``v_scale`` are sidecars the reference path does not need.
``MIXED_PRECISION`` names each quantized module in ``quantized_layers``; otherwise one algo
applies to every Linear not matched by ``exclude_modules`` (globs).
"""

from __future__ import annotations

from typing import Any

from imp_core.checkpoint.base import Checkpoint
from imp_core.errors import QuantError
from imp_core.quant.detect.common import (
    FLOAT_DTYPES,
    check_no_stray_quantized,
    fp8_entry,
    matches_any,
    module_spellings,
    nvfp4_entry,
)
from imp_core.quant.plan import QuantPlan, TensorQuant

NVFP4_ALGOS = {"NVFP4", "W4A16_NVFP4", "W4A8_NVFP4_FP8"}
FP8_ALGOS = {"FP8": "tensor", "FP8_PER_CHANNEL_PER_TOKEN": "channel"}
UNSUPPORTED_ALGOS = {"W4A16_AWQ", "W4A8_AWQ", "NVFP4_AWQ", "NVFP4_SVD", "MXFP8", "INT8_SQ", "INT4_AWQ",
                     "W4A8_MXFP4_FP8", "MXFP4", "INT8_WEIGHT_ONLY", "NVFP4_MSE"}
SIDECAR_SUFFIXES = (".weight_scale", ".weight_scale_2", ".input_scale", ".k_scale", ".v_scale",
                    ".pre_quant_scale")


def _settings(ck: Checkpoint, qc: dict[str, Any] | None) -> tuple[str, str, list[str], dict[str, str]]:
    """(source file, quant_algo, exclude patterns, {module: per-layer algo}) from either file."""
    hf = ck.read_json("hf_quant_config.json")
    if hf is not None:
        src = f"{ck.directory}/hf_quant_config.json"
        q = hf.get("quantization")
        if not isinstance(q, dict):
            raise QuantError(f"{src}: expected a 'quantization' object")
        layers = {}
        for module, entry in (q.get("quantized_layers") or {}).items():
            algo = entry.get("quant_algo") if isinstance(entry, dict) else None
            if not isinstance(algo, str):
                raise QuantError(f"{src}: quantized_layers['{module}'] has no quant_algo")
            layers[module] = algo.upper()
        return src, str(q.get("quant_algo") or "").upper(), list(q.get("exclude_modules") or []), layers
    src = f"{ck.path}/config.json"
    assert qc is not None
    layers = {}
    for gname, group in (qc.get("config_groups") or {}).items():
        w = (group or {}).get("weights") or {}
        algo = "NVFP4" if (w.get("num_bits") == 4 and w.get("type") == "float") else \
            "FP8" if (w.get("num_bits") == 8 and w.get("type") == "float") else f"group '{gname}'"
        if w.get("num_bits") == 8 and w.get("strategy") == "channel":
            algo = "FP8_PER_CHANNEL_PER_TOKEN"
        for target in group.get("targets") or []:
            if target != "Linear":
                layers[target] = algo
    algo = str(qc.get("quant_algo") or "").upper()
    if algo != "MIXED_PRECISION":
        layers = {}
    return src, algo, list(qc.get("ignore") or []), layers


def _check_algo(src: str, algo: str, what: str) -> None:
    if algo in NVFP4_ALGOS or algo in FP8_ALGOS or algo == "MIXED_PRECISION":
        return
    if algo in UNSUPPORTED_ALGOS:
        raise QuantError(f"{src}: {what} quant_algo '{algo}' is not supported by imp "
                         f"(supported: {', '.join(sorted(NVFP4_ALGOS | set(FP8_ALGOS)))}, MIXED_PRECISION)")
    raise QuantError(f"{src}: unknown {what} quant_algo '{algo or '(missing)'}'")


def _layer_algo(module: str, algo: str, exclude: list[str], layers: dict[str, str]) -> str | None:
    if algo == "MIXED_PRECISION":
        for name in module_spellings(module):
            if name in layers:
                return layers[name]
        return None
    return None if matches_any(module, exclude) else algo


def detect_modelopt(ck: Checkpoint, qc: dict[str, Any] | None) -> QuantPlan:
    src, algo, exclude, layers = _settings(ck, qc)
    _check_algo(src, algo, "the checkpoint's")
    for module, layer_algo in layers.items():
        _check_algo(src, layer_algo, f"quantized_layers['{module}']")
    tensors: dict[str, TensorQuant] = {}
    sidecars: set[str] = set()
    t = ck.tensors
    for name, info in t.items():
        if not name.endswith(".weight"):
            continue
        module = name[: -len(".weight")]
        declared = _layer_algo(module, algo, exclude, layers)
        if info.dtype in FLOAT_DTYPES:
            if algo == "MIXED_PRECISION" and declared is not None:
                raise QuantError(f"{info.file}: '{name}' is stored as {info.dtype}, but {src} declares "
                                 f"'{module}' {declared}")
            if module + ".weight_scale" in t:
                raise QuantError(f"{info.file}: '{name}' is stored as {info.dtype} but has a weight_scale "
                                 f"'{module}.weight_scale' (contradictory)")
            continue
        if declared is None:
            why = "does not list it in quantized_layers" if algo == "MIXED_PRECISION" else "excludes it"
            raise QuantError(f"{info.file}: '{name}' is stored as {info.dtype} (quantized), but {src} {why}")
        if module + ".pre_quant_scale" in t:
            raise QuantError(f"{info.file}: '{module}.pre_quant_scale' (an AWQ/SVDQuant variant) is not "
                             f"supported by imp")
        extra = {"input": module + ".input_scale"} if module + ".input_scale" in t else {}
        if info.dtype == "U8":
            if declared not in NVFP4_ALGOS:
                raise QuantError(f"{info.file}: '{name}' is stored as U8 (NVFP4), but {src} declares "
                                 f"'{module}' {declared}")
            tq = nvfp4_entry(ck, name, info, module + ".weight_scale", module + ".weight_scale_2",
                             convention="multiply", scheme=f"ModelOpt {declared}", extra=extra)
        elif info.dtype == "F8_E4M3":
            if declared not in FP8_ALGOS:
                raise QuantError(f"{info.file}: '{name}' is stored as F8_E4M3 (FP8), but {src} declares "
                                 f"'{module}' {declared}")
            tq = fp8_entry(ck, name, info, module + ".weight_scale", scheme=f"ModelOpt {declared}",
                           granularity=FP8_ALGOS[declared], extra=extra)
        else:
            raise QuantError(f"{info.file}: '{name}' is stored as {info.dtype}, which ModelOpt does not write")
        tensors[name] = tq
        sidecars.update(tq.sidecars)
    for name, info in t.items():
        if name.endswith((".k_scale", ".v_scale")):
            sidecars.add(name)
        elif name.endswith(SIDECAR_SUFFIXES) and name not in sidecars:
            raise QuantError(f"{info.file}: scale '{name}' belongs to no quantized weight")
    plan = QuantPlan(producer="modelopt", tensors=tensors, ignore=tuple(exclude), sidecars=frozenset(sidecars),
                     details=_details(ck, algo))
    check_no_stray_quantized(ck, plan, f"{src} does not cover it")
    return plan


def _details(ck: Checkpoint, algo: str) -> tuple[str, ...]:
    hf = ck.read_json("hf_quant_config.json") or {}
    kv = (hf.get("quantization") or {}).get("kv_cache_quant_algo")
    out = [f"ModelOpt {algo}"]
    if kv:
        out.append(f"kv cache {kv} in the checkpoint (imp keeps its cache in the compute dtype)")
    return tuple(out)
