"""FP8 (float8_e4m3fn) weights with per-tensor, per-channel or 2-D block scales (docs/formats.md, "FP8").

Every flavour multiplies: ``W = float(w) * scale`` broadcast over its granularity. That includes the
HF/DeepSeek block format whose scale is named ``weight_scale_inv`` (``[ceil(N/128), ceil(K/128)]``,
the last tile row/column cropped when N or K is not a multiple of 128). A uint8 block scale is
read as E8M0 (``scale_fmt: ue8m0``), as transformers does.
"""

from __future__ import annotations

import math

import torch

from imp_core.errors import QuantError
from imp_core.quant._checks import label, require_dtype, require_tensor, target_device
from imp_core.quant.tables import E4M3_MAX, e8m0_table

DEFAULT_BLOCK = (128, 128)
GRANULARITIES = ("tensor", "channel", "block")
_FLOAT_SCALES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def block_scale_shape(n: int, k: int, block_size=DEFAULT_BLOCK) -> tuple[int, int]:
    """Shape of the block-scale grid for an [n, k] weight: ceil-division per axis."""
    return math.ceil(n / block_size[0]), math.ceil(k / block_size[1])


def infer_fp8_granularity(weight_shape, scale_shape, block_size=DEFAULT_BLOCK) -> str | None:
    """'tensor', 'channel' or 'block' from the shapes alone, or None if none fits."""
    *lead, n, k = weight_shape
    scale_shape = list(scale_shape)
    if math.prod(scale_shape) == 1:
        return "tensor"
    if scale_shape in ([*lead, n], [*lead, n, 1]):
        return "channel"
    if scale_shape == [*lead, *block_scale_shape(n, k, block_size)]:
        return "block"
    if lead and scale_shape in (lead, [*lead, 1, 1]):
        return "tensor"
    return None


def dequant_fp8(
    weight: torch.Tensor,
    scale: torch.Tensor | float,
    dtype: torch.dtype = torch.float32,
    device=None,
    *,
    granularity: str | None = None,
    block_size=DEFAULT_BLOCK,
    name: str | None = None,
) -> torch.Tensor:
    """Dequantize a float8_e4m3fn weight [..., N, K] with a multiplying ``scale``.

    scale: per-tensor ([], [1], or [E] / [E,1,1] for an expert stack), per-channel ([..., N] or
    [..., N, 1]) or per-block ([..., ceil(N/bn), ceil(K/bk)], float or uint8 E8M0).
    ``granularity`` is inferred from the shapes when not given. Arithmetic is float32.
    """
    what = label(name, "FP8 weight")
    require_tensor(weight, what)
    require_dtype(weight, (torch.float8_e4m3fn,), what)
    if weight.dim() < 2:
        raise QuantError(f"{what} must be at least 2-D [N, K], got shape {list(weight.shape)}")
    if isinstance(scale, (int, float)):
        scale = torch.tensor(float(scale), dtype=torch.float32)
    require_tensor(scale, f"{what} scale")
    *lead, n, k = weight.shape
    if granularity is None:
        granularity = infer_fp8_granularity(weight.shape, scale.shape, block_size)
        if granularity is None:
            raise QuantError(
                f"{what} scale has shape {list(scale.shape)}, which fits neither per-tensor, "
                f"per-channel [{n}] nor {tuple(block_size)} blocks {list(block_scale_shape(n, k, block_size))} "
                f"for a weight of shape {list(weight.shape)}"
            )
    if granularity not in GRANULARITIES:
        raise QuantError(f"{what}: unknown FP8 granularity {granularity!r}, expected one of {GRANULARITIES}")
    dev = target_device(device, weight)
    s = _scale_as_float(scale.to(dev), granularity, what)
    w = weight.to(dev).float()
    n_lead = math.prod(lead)
    if granularity == "tensor":
        if s.numel() != 1 and not (lead and s.numel() == n_lead):
            raise QuantError(f"{what} per-tensor scale has shape {list(s.shape)}, expected 1 value or {lead}")
        s = s.reshape(()) if s.numel() == 1 else s.reshape(*lead, 1, 1)
    elif granularity == "channel":
        if s.numel() != n_lead * n:
            raise QuantError(f"{what} per-channel scale has shape {list(s.shape)}, expected {[*lead, n]}")
        s = s.reshape(*lead, n, 1)
    else:
        rows, cols = block_scale_shape(n, k, block_size)
        if list(s.shape) != [*lead, rows, cols]:
            raise QuantError(
                f"{what} block scale has shape {list(s.shape)}, expected {[*lead, rows, cols]}"
            )
        s = s.repeat_interleave(block_size[0], dim=-2)[..., :n, :]
        s = s.repeat_interleave(block_size[1], dim=-1)[..., :k]
    return (w * s).to(dtype)


def _scale_as_float(scale: torch.Tensor, granularity: str, what: str) -> torch.Tensor:
    if scale.dtype == torch.uint8:
        if granularity != "block":
            raise QuantError(f"{what} scale is uint8 (E8M0), which is only valid for block scales")
        return e8m0_table(scale.device)[scale.long()]
    require_dtype(scale, _FLOAT_SCALES, f"{what} scale")
    return scale.float()


def quantize_fp8(
    w: torch.Tensor, granularity: str = "tensor", block_size=DEFAULT_BLOCK
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``w`` [N, K] to float8_e4m3fn with max calibration: ``scale = amax / 448``.

    Returns ``(weight_fp8, scale_fp32)``; scale shape [] (tensor), [N, 1] (channel) or
    [ceil(N/bn), ceil(K/bk)] (block, zero-padded edge tiles). All-zero groups get scale 1.
    For fixtures and tests.
    """
    require_tensor(w, "weight to quantize")
    if w.dim() != 2:
        raise QuantError(f"quantize_fp8 expects a 2-D [N, K] weight, got shape {list(w.shape)}")
    w = w.float()
    n, k = w.shape
    if granularity == "tensor":
        amax = w.abs().amax()
        scale = _nonzero(amax / E4M3_MAX)
        full = scale
    elif granularity == "channel":
        scale = _nonzero(w.abs().amax(dim=1, keepdim=True) / E4M3_MAX)
        full = scale
    elif granularity == "block":
        bn, bk = block_size
        rows, cols = block_scale_shape(n, k, block_size)
        padded = torch.zeros(rows * bn, cols * bk, dtype=torch.float32)
        padded[:n, :k] = w
        amax = padded.reshape(rows, bn, cols, bk).abs().amax(dim=(1, 3))
        scale = _nonzero(amax / E4M3_MAX)
        full = scale.repeat_interleave(bn, 0)[:n].repeat_interleave(bk, 1)[:, :k]
    else:
        raise QuantError(f"quantize_fp8: unknown granularity {granularity!r}, expected one of {GRANULARITIES}")
    q = (w / full).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q, scale


def _nonzero(scale: torch.Tensor) -> torch.Tensor:
    return torch.where(scale == 0, torch.ones_like(scale), scale)
