"""Helpers every quant detector shares: reading the quantization config, matching module
names against ignore/target globs, and building the per-tensor entries with their checks.

The detectors (``ct``, ``modelopt``, ``gguf``) import this module and nothing of each other;
``dispatch`` imports the detectors. No tensor bytes are read anywhere in this package.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any, Iterable

from imp_core.checkpoint.base import Checkpoint, TensorInfo
from imp_core.checkpoint.names import normalize_name
from imp_core.errors import QuantError
from imp_core.quant.nvfp4 import NVFP4_BLOCK
from imp_core.quant.plan import QuantPlan, TensorQuant

FLOAT_DTYPES = {"F32", "F16", "BF16", "F64"}
SCALE_DTYPES = {"F32", "F16", "BF16"}

# quant_method values imp refuses by name (transformers' AUTO_QUANTIZER_MAPPING spellings)
UNSUPPORTED_METHODS = {
    "awq": "AWQ", "gptq": "GPTQ", "bitsandbytes": "bitsandbytes", "hqq": "HQQ", "aqlm": "AQLM",
    "eetq": "EETQ", "quanto": "Quanto", "torchao": "torchao", "bitnet": "BitNet", "higgs": "HIGGS",
    "vptq": "VPTQ", "spqr": "SpQR", "fbgemm_fp8": "FBGEMM FP8", "fp_quant": "FP-Quant",
    "auto-round": "AutoRound", "mxfp4": "MXFP4 (gpt-oss)", "exl2": "EXL2", "marlin": "Marlin",
    "gptq_marlin": "GPTQ-Marlin", "awq_marlin": "AWQ-Marlin", "quark": "Quark", "hqq_aten": "HQQ",
}
SUPPORTED = ("modelopt (NVFP4, W4A16_NVFP4, FP8, MIXED_PRECISION of those), compressed-tensors "
             "(nvfp4-pack-quantized, float-quantized), fp8 (block weight_scale_inv), GGUF")


def where(ck: Checkpoint, info: TensorInfo | None = None) -> str:
    return str(info.file) if info is not None else str(ck.path)


def quant_config(ck: Checkpoint) -> dict[str, Any] | None:
    qc = ck.config.get("quantization_config") or ck.text_config.get("quantization_config")
    if qc is not None and not isinstance(qc, dict):
        raise QuantError(f"{ck.path}/config.json: quantization_config must be an object, got {type(qc).__name__}")
    return qc


def refuse_unsupported_method(ck: Checkpoint, method: str) -> None:
    label = UNSUPPORTED_METHODS.get(method.lower())
    if label:
        raise QuantError(f"{ck.path}/config.json: quantization_config.quant_method '{method}' ({label}) is "
                         f"not supported by imp; supported: {SUPPORTED}")
    raise QuantError(f"{ck.path}/config.json: unknown quantization_config.quant_method '{method}'; "
                     f"supported: {SUPPORTED}")


def module_spellings(stored_module: str) -> list[str]:
    """A module name as stored, normalised, and with the VLM text prefix: ignore lists use any."""
    out = [stored_module]
    norm = normalize_name(stored_module)
    if norm and norm not in out:
        out.append(norm)
    if norm and norm.startswith("model."):
        out.append("model.language_model." + norm[len("model."):])
    return out


def matches_any(stored_module: str, patterns: Iterable[str]) -> str | None:
    """The first ignore/exclude entry that covers the module (exact, glob, or ``re:`` regex)."""
    names = module_spellings(stored_module)
    for pat in patterns:
        if not isinstance(pat, str):
            continue
        if pat.startswith("re:"):
            rx = re.compile(pat[3:])
            if any(rx.match(n) for n in names):
                return pat
        elif any(n == pat or fnmatch.fnmatchcase(n, pat) for n in names):
            return pat
    return None


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def nvfp4_entry(ck: Checkpoint, logical: str, packed: TensorInfo, block: str, glob: str, *,
                convention: str, scheme: str, extra: dict[str, str] | None = None) -> TensorQuant:
    """Validate one NVFP4 weight and its sidecars (metadata only) and describe it."""
    t = ck.tensors
    if packed.dtype != "U8":
        raise QuantError(f"{where(ck, packed)}: NVFP4 weight '{packed.name}' is stored as {packed.dtype}, "
                         f"expected U8 (two E2M1 codes per byte)")
    if len(packed.shape) < 2:
        raise QuantError(f"{where(ck, packed)}: NVFP4 weight '{packed.name}' has shape {list(packed.shape)}, "
                         f"expected [N, K/2] or [E, N, K/2]")
    for role, name in (("block scale", block), ("global scale", glob)):
        if name not in t:
            raise QuantError(f"{where(ck, packed)}: NVFP4 weight '{packed.name}' has no {role} "
                             f"'{name}' (an incomplete checkpoint)")
    *lead, n, half = packed.shape
    k = 2 * half
    if k % NVFP4_BLOCK:
        raise QuantError(f"{where(ck, packed)}: NVFP4 weight '{packed.name}' has K={k} columns, not "
                         f"divisible by the block size 16")
    b = t[block]
    if b.dtype != "F8_E4M3":
        raise QuantError(f"{where(ck, b)}: NVFP4 block scale '{block}' is {b.dtype}, expected F8_E4M3")
    want = (*lead, n, k // NVFP4_BLOCK)
    # llm-compressor's repack_moe concatenates gate/up block scales on the last axis
    stacked_gate_up = len(lead) == 1 and n % 2 == 0 and tuple(b.shape) == (*lead, n // 2, 2 * (k // NVFP4_BLOCK))
    if tuple(b.shape) != want and not stacked_gate_up:
        raise QuantError(f"{where(ck, b)}: NVFP4 block scale '{block}' has shape {list(b.shape)}, expected "
                         f"{list(want)} for the packed weight '{packed.name}' {list(packed.shape)}")
    g = t[glob]
    if g.dtype not in SCALE_DTYPES:
        raise QuantError(f"{where(ck, g)}: NVFP4 global scale '{glob}' is {g.dtype}, expected F32")
    count = numel(g.shape)
    allowed = {1} | ({numel(tuple(lead)), 2 * numel(tuple(lead))} if lead else set())
    if count not in allowed:
        raise QuantError(f"{where(ck, g)}: NVFP4 global scale '{glob}' has shape {list(g.shape)}, expected "
                         f"one value{' or one per expert ' + str(lead) if lead else ''}")
    scales = {"block": block, "global": glob, **(extra or {})}
    return TensorQuant(name=logical, format="nvfp4", scale_tensors=scales, convention=convention,
                       logical_shape=(*lead, n, k), stored=packed.name, scheme=scheme)


def fp8_entry(ck: Checkpoint, logical: str, weight: TensorInfo, scale: str, *, scheme: str,
              granularity: str | None = None, block_size: tuple[int, int] | None = None,
              extra: dict[str, str] | None = None) -> TensorQuant:
    """Validate one FP8 weight and its multiplying scale (metadata only) and describe it."""
    from imp_core.quant.fp8 import DEFAULT_BLOCK, infer_fp8_granularity

    if weight.dtype != "F8_E4M3":
        raise QuantError(f"{where(ck, weight)}: FP8 weight '{weight.name}' is stored as {weight.dtype}, "
                         f"expected F8_E4M3")
    if scale not in ck.tensors:
        raise QuantError(f"{where(ck, weight)}: FP8 weight '{weight.name}' has no scale '{scale}' "
                         f"(an incomplete checkpoint)")
    s = ck.tensors[scale]
    if s.dtype not in SCALE_DTYPES and not (s.dtype == "U8" and granularity == "block"):
        raise QuantError(f"{where(ck, s)}: FP8 scale '{scale}' is {s.dtype}, expected F32")
    block = tuple(block_size or DEFAULT_BLOCK)
    found = infer_fp8_granularity(weight.shape, s.shape, block)
    if found is None or (granularity is not None and found != granularity
                         and not (granularity == "block" and found == "tensor" and numel(s.shape) == 1)):
        raise QuantError(f"{where(ck, s)}: FP8 scale '{scale}' has shape {list(s.shape)}, which does not fit "
                         f"{granularity or 'any'} scales for the weight '{weight.name}' {list(weight.shape)}")
    return TensorQuant(name=logical, format="fp8", scale_tensors={"scale": scale, **(extra or {})},
                       convention="multiply", logical_shape=tuple(weight.shape), stored=weight.name,
                       granularity=found, block_size=block if found == "block" else None, scheme=scheme)


def check_no_stray_quantized(ck: Checkpoint, plan: QuantPlan, what: str) -> None:
    """A U8/F8 ``.weight`` that the plan does not cover means the config and tensors disagree."""
    covered = {t.stored_name for t in plan.tensors.values()} | set(plan.sidecars)
    for info in ck.tensors.values():
        if info.name in covered or info.dtype in FLOAT_DTYPES:
            continue
        if info.name.endswith((".weight", "_packed")) or info.dtype in ("U8", "F8_E4M3", "F8_E5M2"):
            raise QuantError(f"{info.file}: tensor '{info.name}' is stored as {info.dtype}, but {what}")


def detect_unquantized(checkpoint: Checkpoint) -> QuantPlan:
    """Checkpoints with no quantization config: every weight must be stored as floats."""
    plan = QuantPlan()
    check_no_stray_quantized(checkpoint, plan, "the checkpoint declares no quantization")
    return plan
