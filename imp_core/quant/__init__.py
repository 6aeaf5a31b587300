"""quant."""

from imp_core.quant.fp8 import dequant_fp8, quantize_fp8
from imp_core.quant.gguf_blocks import GGUF_BLOCK, dequant_gguf, gguf_nbytes
from imp_core.quant.gguf_quantize import quantize_gguf
from imp_core.quant.mxfp4 import dequant_mxfp4
from imp_core.quant.nvfp4 import (
    dequant_nvfp4,
    global_scale_from_compressed_tensors,
    global_scale_from_modelopt,
    quantize_nvfp4,
)
from imp_core.quant.qtensor import QTensor, dequantize

__all__ = [
    "GGUF_BLOCK",
    "QTensor",
    "dequant_fp8",
    "dequant_gguf",
    "dequant_mxfp4",
    "dequant_nvfp4",
    "dequantize",
    "global_scale_from_compressed_tensors",
    "global_scale_from_modelopt",
    "gguf_nbytes",
    "quantize_fp8",
    "quantize_gguf",
    "quantize_nvfp4",
]
