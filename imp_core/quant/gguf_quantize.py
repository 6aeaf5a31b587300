"""Quantize a weight into GGUF block bytes, for fixtures and tests.

Uses gguf-py's own numpy quantizers where 0.19 has them (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0,
Q5_1, MXFP4), our simple K-quant encoders (gguf_kquant_encode.py) for Q2_K..Q6_K, and ModelOpt's
NVFP4 formula with a fixed global scale of 1 for NVFP4 (the blocks carry no tensor scale).
"""

from __future__ import annotations

import numpy as np
import torch

from imp_core.errors import QuantError
from imp_core.quant.gguf_blocks import GGUF_BLOCK, normalize_gguf_type
from imp_core.quant.gguf_fp4 import hf_nvfp4_to_gguf_blocks
from imp_core.quant.gguf_kquant_encode import K_ENCODERS
from imp_core.quant.nvfp4 import quantize_nvfp4

_GGUF_PY_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "MXFP4")


def quantize_gguf(w: torch.Tensor | np.ndarray, qtype_name: str) -> np.ndarray:
    """Quantize ``w`` (torch order [..., cols], cols a multiple of the block size) to GGUF bytes.

    Returns uint8 [..., cols / block_elems * block_bytes], the layout gguf-py's reader exposes and
    ``dequant_gguf`` accepts.
    """
    qtype = normalize_gguf_type(qtype_name)
    arr = w.detach().float().cpu().numpy() if isinstance(w, torch.Tensor) else np.asarray(w, np.float32)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    elems, nbytes = GGUF_BLOCK[qtype]
    cols = arr.shape[-1]
    if cols % elems:
        raise QuantError(
            f"quantize_gguf: {qtype} needs rows that are a multiple of {elems}, got shape {list(arr.shape)}"
        )
    out_shape = (*arr.shape[:-1], cols // elems * nbytes)
    if qtype in _GGUF_PY_TYPES:
        from gguf import GGMLQuantizationType, quants

        data = quants.quantize(arr, GGMLQuantizationType[qtype])
        return np.ascontiguousarray(data).view(np.uint8).reshape(out_shape)
    if qtype in K_ENCODERS:
        return K_ENCODERS[qtype](arr.reshape(-1, elems)).reshape(out_shape)
    if qtype == "NVFP4":
        rows = torch.from_numpy(arr.reshape(-1, cols))
        codes, scales, _ = quantize_nvfp4(rows, convention="modelopt", global_scale=1.0)
        return hf_nvfp4_to_gguf_blocks(codes, scales).numpy().reshape(out_shape)
    raise QuantError(f"quantize_gguf: no quantizer for GGUF type {qtype}")
