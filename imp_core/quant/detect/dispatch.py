"""The core's quant detection: a pure function of checkpoint metadata -> ``QuantPlan``.

Dispatch (``detect_quant``): a GGUF file -> per-tensor GGUF types (``gguf``); a ModelOpt export
(``hf_quant_config.json`` or ``quant_method: modelopt``) -> ``modelopt``; ``quant_method:
compressed-tensors`` / ``fp8`` -> ``ct``; a method imp does not support (AWQ, GPTQ,
bitsandbytes, ...) is refused by name; no quantization config -> every tensor must be a float
tensor. Every detector cross-checks the declared layout against the stored dtypes and shapes and
refuses an incomplete or contradictory checkpoint with one line naming the tensor.
"""

from __future__ import annotations

from imp_core.checkpoint.base import Checkpoint
from imp_core.quant.detect.common import detect_unquantized, quant_config, refuse_unsupported_method
from imp_core.quant.detect.ct import detect_compressed_tensors, detect_fp8_block
from imp_core.quant.detect.gguf import detect_gguf
from imp_core.quant.detect.modelopt import detect_modelopt
from imp_core.quant.plan import QuantPlan


def detect_quant(checkpoint: Checkpoint) -> QuantPlan:
    """The core's detector chain (the ``imp-core`` plugin's ``imp_detect_quant``)."""
    if checkpoint.format == "gguf":
        return detect_gguf(checkpoint)
    qc = quant_config(checkpoint)
    method = str(qc.get("quant_method", "")) if qc else ""
    if checkpoint.has_file("hf_quant_config.json") or method == "modelopt":
        return detect_modelopt(checkpoint, qc)
    if qc:
        if method == "compressed-tensors":
            return detect_compressed_tensors(checkpoint, qc)
        if method == "fp8":
            return detect_fp8_block(checkpoint, qc)
        refuse_unsupported_method(checkpoint, method or "?")
    return detect_unquantized(checkpoint)
