"""Dequantize a GGUF tensor from its raw bytes: one entry point over every supported block type.

Shapes are in torch order ([rows, cols], i.e. GGUF's ``ne`` reversed); the row length (last dim)
must be a multiple of the type's block size and the raw byte count must match exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from imp_core.errors import QuantError
from imp_core.quant import gguf_fp4, gguf_kquants, gguf_legacy
from imp_core.quant._checks import target_device

# name -> (elements per block, bytes per block); docs/formats.md "GGUF block types" / gguf GGML_QUANT_SIZES.
GGUF_BLOCK: dict[str, tuple[int, int]] = {
    "F32": (1, 4),
    "F16": (1, 2),
    "BF16": (1, 2),
    "Q8_0": (32, 34),
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
    "Q2_K": (256, 84),
    "Q3_K": (256, 110),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
    "MXFP4": (32, 17),
    "NVFP4": (64, 36),
}

_DECODERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "F32": gguf_legacy.decode_f32,
    "F16": gguf_legacy.decode_f16,
    "BF16": gguf_legacy.decode_bf16,
    "Q8_0": gguf_legacy.decode_q8_0,
    "Q4_0": gguf_legacy.decode_q4_0,
    "Q4_1": gguf_legacy.decode_q4_1,
    "Q5_0": gguf_legacy.decode_q5_0,
    "Q5_1": gguf_legacy.decode_q5_1,
    "Q2_K": gguf_kquants.decode_q2_k,
    "Q3_K": gguf_kquants.decode_q3_k,
    "Q4_K": gguf_kquants.decode_q4_k,
    "Q5_K": gguf_kquants.decode_q5_k,
    "Q6_K": gguf_kquants.decode_q6_k,
    "MXFP4": gguf_fp4.decode_mxfp4,
    "NVFP4": gguf_fp4.decode_nvfp4,
}


def normalize_gguf_type(qtype_name: str) -> str:
    """'Q4_K', 'q4_k' or 'gguf:Q4_K' -> 'Q4_K'; QuantError if the type is not supported."""
    name = str(qtype_name)
    if name.lower().startswith("gguf:"):
        name = name[5:]
    name = name.upper()
    if name not in GGUF_BLOCK:
        raise QuantError(
            f"GGUF tensor type {name} is not supported (supported: {', '.join(GGUF_BLOCK)})"
        )
    return name


def gguf_nbytes(qtype_name: str, shape: tuple[int, ...]) -> int:
    """Stored size in bytes of a tensor of this type and torch-order shape."""
    name = normalize_gguf_type(qtype_name)
    elems, nbytes = GGUF_BLOCK[name]
    shape = tuple(int(s) for s in shape)
    row = shape[-1] if shape else 1
    if row % elems:
        raise QuantError(
            f"GGUF {name} tensor of shape {list(shape)}: row length {row} is not a multiple of the "
            f"block size {elems}"
        )
    return math.prod(shape) // elems * nbytes


def dequant_gguf(
    raw: torch.Tensor,
    qtype_name: str,
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    device=None,
    *,
    name: str | None = None,
) -> torch.Tensor:
    """Dequantize the raw bytes (uint8, any shape, exactly ``gguf_nbytes`` of them) to ``shape``.

    Decoding is float32 and bit-identical to gguf-py's numpy ``dequantize``; the result is cast to
    ``dtype`` at the end. ``name`` (the tensor's name) only improves error messages.
    """
    what = f"GGUF tensor '{name}'" if name else "GGUF tensor"
    qtype = normalize_gguf_type(qtype_name)
    if not isinstance(raw, torch.Tensor) or raw.dtype != torch.uint8:
        got = raw.dtype if isinstance(raw, torch.Tensor) else type(raw).__name__
        raise QuantError(f"{what} ({qtype}): raw data must be a uint8 tensor, got {got}")
    expected = gguf_nbytes(qtype, shape)
    if raw.numel() != expected:
        raise QuantError(
            f"{what} ({qtype}, shape {list(shape)}) has {raw.numel()} bytes, expected {expected}"
        )
    elems, nbytes = GGUF_BLOCK[qtype]
    dev = target_device(device, raw)
    blocks = raw.to(dev).reshape(-1, nbytes)
    values = _DECODERS[qtype](blocks)
    return values.reshape(tuple(shape)).to(dtype)
