"""GGUF: the per-tensor type comes from each tensor info (docs/formats.md, "GGUF block types"), never from file_type.

F32/F16/BF16 (and integer) tensors are dense. Block types imp can dequantize become
``gguf:<TYPE>``; any other ggml type (IQ*, Q8_K, TQ*, ...) is refused naming the tensor. A GGUF
NVFP4 weight may carry ``<base>.scale`` (the per-tensor global, a multiplier) and
``<base>.input_scale`` sidecars; ``.scale`` beside a weight of another type is a model tensor
(e.g. Gemma-4's ``ffn_down_exps.scale``), not a sidecar.
"""

from __future__ import annotations

from imp_core.checkpoint.base import Checkpoint
from imp_core.checkpoint.gguf_reader import PLAIN_TYPES
from imp_core.errors import QuantError
from imp_core.quant.gguf_blocks import GGUF_BLOCK
from imp_core.quant.plan import QuantPlan, TensorQuant

FILE_TYPES = {0: "ALL_F32", 1: "MOSTLY_F16", 2: "MOSTLY_Q4_0", 3: "MOSTLY_Q4_1", 7: "MOSTLY_Q8_0",
              8: "MOSTLY_Q5_0", 9: "MOSTLY_Q5_1", 10: "MOSTLY_Q2_K", 11: "MOSTLY_Q3_K_S", 12: "MOSTLY_Q3_K_M",
              13: "MOSTLY_Q3_K_L", 14: "MOSTLY_Q4_K_S", 15: "MOSTLY_Q4_K_M", 16: "MOSTLY_Q5_K_S",
              17: "MOSTLY_Q5_K_M", 18: "MOSTLY_Q6_K", 32: "MOSTLY_BF16", 38: "MOSTLY_MXFP4_MOE",
              39: "MOSTLY_NVFP4"}


def detect_gguf(ck: Checkpoint) -> QuantPlan:
    t = ck.tensors
    tensors: dict[str, TensorQuant] = {}
    sidecars: set[str] = set()
    for name, info in t.items():
        if info.dtype in PLAIN_TYPES:
            continue
        if info.dtype not in GGUF_BLOCK:
            raise QuantError(f"{info.file}: tensor '{name}' has GGUF type {info.dtype}, which imp cannot "
                             f"dequantize (supported: {', '.join(GGUF_BLOCK)})")
        scales: dict[str, str] = {}
        if info.dtype == "NVFP4" and name.endswith(".weight"):
            base = name[: -len(".weight")]
            for role, suffix in (("global", ".scale"), ("input", ".input_scale")):
                sc = t.get(base + suffix)
                if sc is None:
                    continue
                if sc.dtype != "F32":
                    raise QuantError(f"{sc.file}: NVFP4 scale '{sc.name}' is {sc.dtype}, expected F32")
                lead = info.shape[:-2]
                n = 1
                for d in sc.shape:
                    n *= d
                if n not in (1, *([lead[0]] if lead else [])):
                    raise QuantError(f"{sc.file}: NVFP4 scale '{sc.name}' has shape {list(sc.shape)}, "
                                     f"expected one value or one per expert")
                scales[role] = sc.name
        tensors[name] = TensorQuant(name=name, format=f"gguf:{info.dtype}", scale_tensors=scales,
                                    convention="multiply" if scales else None, logical_shape=info.shape,
                                    stored=name, scheme=f"GGUF {info.dtype}")
        sidecars.update(scales.values())
    ft = ck.metadata.get("general.file_type")
    details = (f"general.file_type {FILE_TYPES.get(ft, ft)} (informational; types read per tensor)",) \
        if ft is not None else ()
    return QuantPlan(producer="gguf", tensors=tensors, sidecars=frozenset(sidecars), details=details)
