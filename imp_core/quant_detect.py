"""The core's quant detection for checkpoints that carry no quantization at all.

Quantized layouts (ModelOpt, compressed-tensors, FP8, GGUF) are recognised by the formats
issue's detectors; until those land, a quantized checkpoint is refused by name here rather
than read as if it were dense (which would give fluent garbage).
"""

from __future__ import annotations

from imp_core.checkpoint.base import Checkpoint
from imp_core.errors import QuantError
from imp_core.quant_plan import QuantPlan

FLOAT_DTYPES = {"F32", "F16", "BF16", "F64"}


def detect_unquantized(checkpoint: Checkpoint) -> QuantPlan:
    qc = checkpoint.config.get("quantization_config") or checkpoint.text_config.get("quantization_config")
    if qc:
        method = qc.get("quant_method", "?") if isinstance(qc, dict) else "?"
        raise QuantError(f"{checkpoint.path}/config.json: quantization_config with quant_method "
                         f"'{method}' is not supported by this build")
    if checkpoint.has_file("hf_quant_config.json"):
        raise QuantError(f"{checkpoint.path}/hf_quant_config.json: ModelOpt quantized checkpoints are "
                         f"not supported by this build")
    for info in checkpoint.tensors.values():
        if info.name.endswith(".weight") and info.dtype not in FLOAT_DTYPES:
            raise QuantError(f"{info.file}: tensor '{info.name}' is stored as {info.dtype} but the "
                             f"checkpoint declares no quantization")
    return QuantPlan()
