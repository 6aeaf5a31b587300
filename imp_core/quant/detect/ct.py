"""compressed-tensors / llm-compressor (docs/formats.md, "NVFP4", "FP8") and HF block-FP8 (``quant_method: fp8``).

compressed-tensors: ``config_groups`` say which modules (``targets``: "Linear", names or
``re:`` regexes) carry which weight scheme; ``ignore`` lists modules left dense. NVFP4
(``nvfp4-pack-quantized``): ``weight_packed`` U8 + ``weight_scale`` F8_E4M3 +
``weight_global_scale`` F32 (the global DIVIDES); llm-compressor's repacked 3-D experts use
the same suffixes on the parameter name (``experts.gate_up_proj_packed``, ``_scale``,
``_global_scale`` with one value per expert, or per expert and gate/up half). FP8
(``float-quantized``): ``weight`` F8_E4M3 + ``weight_scale`` (tensor / channel / block).
A Linear that a group targets must be packed or ignored. HF block FP8: ``weight`` F8_E4M3 +
``weight_scale_inv`` ([ceil(N/bn), ceil(K/bk)], multiplies despite the name).
"""

from __future__ import annotations

import re
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
from imp_core.checkpoint.roles import is_linear_weight

NVFP4_FORMAT = "nvfp4-pack-quantized"
FP8_FORMATS = ("float-quantized", "naive-quantized")
CT_SIDECARS = (".weight_scale", ".weight_global_scale", ".input_global_scale", ".input_scale",
               ".weight_zero_point", ".k_scale", ".v_scale", ".weight_shape", ".weight_g_idx")


class _Group:
    def __init__(self, src: str, name: str, group: dict[str, Any], top_format: str | None) -> None:
        w = group.get("weights") or {}
        self.name = name
        self.targets = list(group.get("targets") or [])
        self.format = group.get("format") or top_format
        bits, typ, strategy = w.get("num_bits"), w.get("type"), w.get("strategy")
        if self.format == "dense":
            self.kind = "dense"
        elif bits == 4 and typ == "float" and (w.get("group_size") in (16, None)):
            self.kind = "nvfp4"
        elif bits == 8 and typ == "float":
            self.kind = "fp8"
        else:
            raise QuantError(f"{src}: config_groups.{name} ({typ} {bits}-bit weights, strategy {strategy}, "
                             f"format {self.format}) is not supported by imp (supported: NVFP4 "
                             f"nvfp4-pack-quantized, FP8 float-quantized)")
        if self.kind == "nvfp4" and self.format not in (NVFP4_FORMAT, None, "mixed-precision"):
            raise QuantError(f"{src}: config_groups.{name} is NVFP4 but its format is '{self.format}', "
                             f"expected '{NVFP4_FORMAT}'")
        if w.get("symmetric") is False:
            raise QuantError(f"{src}: config_groups.{name} has asymmetric weights (zero points), not supported")
        self.strategy = strategy
        block = w.get("block_structure")
        self.block = tuple(int(x) for x in block) if block else None

    def targets_module(self, module: str, logical: str, shape: tuple[int, ...]) -> bool:
        for target in self.targets:
            if target == "Linear":
                if is_linear_weight(logical, shape) or not logical.endswith(".weight"):
                    return True
            elif target.startswith("re:"):
                if any(re.match(target[3:], n) for n in module_spellings(module)):
                    return True
            elif target in module_spellings(module):
                return True
        return False


def _groups(src: str, qc: dict[str, Any]) -> list[_Group]:
    groups = qc.get("config_groups") or {}
    if not isinstance(groups, dict) or not groups:
        raise QuantError(f"{src}: compressed-tensors quantization_config has no config_groups")
    top = qc.get("format")
    out = [_Group(src, n, g, top) for n, g in groups.items()]
    # explicit names/regexes win over the catch-all "Linear" target
    return sorted(out, key=lambda g: "Linear" in g.targets)


def _group_of(groups: list[_Group], module: str, logical: str, shape: tuple[int, ...]) -> _Group | None:
    return next((g for g in groups if g.targets_module(module, logical, shape)), None)


def detect_compressed_tensors(ck: Checkpoint, qc: dict[str, Any]) -> QuantPlan:
    src = f"{ck.path}/config.json"
    groups = _groups(src, qc)
    ignore = list(qc.get("ignore") or [])
    t = ck.tensors
    tensors: dict[str, TensorQuant] = {}
    sidecars: set[str] = set()
    logical_names: dict[str, str] = {}
    for name, info in t.items():
        if name.endswith("_zero_point"):
            raise QuantError(f"{info.file}: '{name}': asymmetric (zero-point) weights are not supported by imp")
        if name.endswith("_packed"):
            base = name[: -len("_packed")]
            module = base[: -len(".weight")] if base.endswith(".weight") else base
            logical_shape = (*info.shape[:-1], 2 * info.shape[-1]) if info.shape else ()
            group = _group_of(groups, module, base, logical_shape)
            ignored = matches_any(module, ignore)
            if ignored or group is None or group.kind != "nvfp4":
                why = f"ignore entry '{ignored}' covers it" if ignored else \
                    "no NVFP4 config group targets it" if group is None or group.kind == "dense" else \
                    f"config group '{group.name}' is {group.kind}"
                raise QuantError(f"{info.file}: '{name}' is an NVFP4-packed weight, but {why}")
            input_name = (module + ".input_global_scale") if base.endswith(".weight") else base + "_input_global_scale"
            extra = {"input": input_name} if input_name in t else {}
            tq = nvfp4_entry(ck, base, info, base + "_scale", base + "_global_scale", convention="divide",
                             scheme=f"compressed-tensors {NVFP4_FORMAT}", extra=extra)
            tensors[base] = tq
            logical_names[name] = base
            sidecars.update(tq.sidecars)
            continue
        if not name.endswith(".weight"):
            continue
        module = name[: -len(".weight")]
        group = _group_of(groups, module, name, info.shape)
        ignored = matches_any(module, ignore)
        if info.dtype == "F8_E4M3":
            if ignored or group is None or group.kind != "fp8":
                why = f"ignore entry '{ignored}' covers it" if ignored else "no FP8 config group targets it"
                raise QuantError(f"{info.file}: '{name}' is stored as F8_E4M3, but {why}")
            granularity = {"tensor": "tensor", "channel": "channel", "block": "block"}.get(group.strategy)
            extra = {"input": module + ".input_scale"} if module + ".input_scale" in t else {}
            tq = fp8_entry(ck, name, info, module + ".weight_scale", granularity=granularity,
                           block_size=group.block, scheme=f"compressed-tensors FP8 ({group.strategy})",
                           extra=extra)
            tensors[name] = tq
            sidecars.update(tq.sidecars)
        elif info.dtype in FLOAT_DTYPES and group is not None and group.kind != "dense" and not ignored \
                and is_linear_weight(name, info.shape):
            raise QuantError(f"{info.file}: Linear '{module}' is stored as {info.dtype}, neither packed nor "
                             f"in the ignore list of {src} (config group '{group.name}' targets it)")
    for name, info in t.items():
        if name.endswith((".k_scale", ".v_scale")):
            sidecars.add(name)
        elif name.endswith(CT_SIDECARS) and name not in sidecars:
            raise QuantError(f"{info.file}: scale '{name}' belongs to no quantized weight")
    details = [f"compressed-tensors {', '.join(sorted({g.format or g.kind for g in groups}))}"]
    if qc.get("kv_cache_scheme"):
        details.append("kv cache scheme in the checkpoint (imp keeps its cache in the compute dtype)")
    plan = QuantPlan(producer="compressed-tensors", tensors=tensors, ignore=tuple(ignore),
                     sidecars=frozenset(sidecars), logical_names=logical_names, details=tuple(details))
    check_no_stray_quantized(ck, plan, f"{src} does not cover it")
    return plan


def detect_fp8_block(ck: Checkpoint, qc: dict[str, Any]) -> QuantPlan:
    src = f"{ck.path}/config.json"
    block = qc.get("weight_block_size")
    if block is not None and (not isinstance(block, list) or len(block) != 2):
        raise QuantError(f"{src}: quantization_config.weight_block_size must be [rows, cols], got {block!r}")
    ignore = list(qc.get("modules_to_not_convert") or []) + list(qc.get("ignored_layers") or [])
    t = ck.tensors
    tensors: dict[str, TensorQuant] = {}
    sidecars: set[str] = set()
    for name, info in t.items():
        if not name.endswith(".weight") or info.dtype in FLOAT_DTYPES:
            continue
        module = name[: -len(".weight")]
        if matches_any(module, ignore):
            raise QuantError(f"{info.file}: '{name}' is stored as {info.dtype}, but {src} lists "
                             f"'{module}' in modules_to_not_convert")
        extra = {k: module + s for k, s in (("input", ".activation_scale"), ("input", ".input_scale"))
                 if module + s in t}
        tq = fp8_entry(ck, name, info, module + ".weight_scale_inv",
                       granularity="block" if block else None,
                       block_size=tuple(int(b) for b in block) if block else None,
                       scheme=f"fp8 block {block}" if block else "fp8", extra=extra)
        tensors[name] = tq
        sidecars.update(tq.sidecars)
    for name, info in t.items():
        if name.endswith((".weight_scale_inv", ".activation_scale")) and name not in sidecars:
            raise QuantError(f"{info.file}: scale '{name}' belongs to no FP8 weight")
    plan = QuantPlan(producer="fp8", tensors=tensors, ignore=tuple(ignore), sidecars=frozenset(sidecars),
                     details=(f"HF FP8, weight_block_size {block}, activations {qc.get('activation_scheme')}",))
    check_no_stray_quantized(ck, plan, f"{src} does not cover it")
    return plan
