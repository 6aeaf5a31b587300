"""MXFP4 in HF layout (OCP MX): E2M1 codes, one E8M0 exponent per 32 elements along K.

``W[n, 32b + i] = E2M1[code] * 2^(scale[n, b] - 127)``; two codes per byte, even element in the
low nibble (ModelOpt ``MXFP4QTensor``). GGUF's MXFP4 blocks are decoded in gguf_fp4.py.
"""

from __future__ import annotations

import torch

from imp_core.errors import QuantError
from imp_core.quant._checks import label, require_dtype, require_tensor, target_device
from imp_core.quant.fp4 import e2m1_values
from imp_core.quant.tables import e8m0_table

MXFP4_BLOCK = 32


def dequant_mxfp4(
    codes: torch.Tensor,
    block_scale: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    device=None,
    *,
    name: str | None = None,
) -> torch.Tensor:
    """Dequantize codes uint8 [..., N, K/2] with E8M0 scales uint8 [..., N, K/32] to [..., N, K]."""
    what = label(name, "MXFP4 weight")
    require_tensor(codes, f"{what} codes")
    require_tensor(block_scale, f"{what} block scale")
    require_dtype(codes, (torch.uint8,), f"{what} codes")
    require_dtype(block_scale, (torch.uint8,), f"{what} block scale (E8M0)")
    if codes.dim() < 2:
        raise QuantError(f"{what} codes must be at least 2-D [N, K/2], got shape {list(codes.shape)}")
    k = codes.shape[-1] * 2
    if k % MXFP4_BLOCK:
        raise QuantError(f"{what} has K={k} columns, not a multiple of the MXFP4 block size 32")
    expected = (*codes.shape[:-1], k // MXFP4_BLOCK)
    if tuple(block_scale.shape) != expected:
        raise QuantError(
            f"{what} block scale has shape {list(block_scale.shape)}, expected {list(expected)}"
        )
    dev = target_device(device, codes)
    values = e2m1_values(codes.to(dev)).unflatten(-1, (k // MXFP4_BLOCK, MXFP4_BLOCK))
    scale = e8m0_table(dev)[block_scale.to(dev).long()].unsqueeze(-1)
    return (values * scale).flatten(-2).to(dtype)
