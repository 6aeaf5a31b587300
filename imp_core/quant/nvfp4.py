"""NVFP4 (E2M1 codes, E4M3 scale per 16 elements, one FP32 global scale) as stored in HF checkpoints.

Layout and scale conventions: docs/formats.md, "NVFP4" (ModelOpt and compressed-tensors).
``W[n, 16b+i] = E2M1[code] * float(block_scale[n, b]) * global`` where ``global`` is a MULTIPLIER:
ModelOpt stores it as is (``weight_scale_2``), compressed-tensors stores its inverse
(``weight_global_scale``); convert with the two helpers below before calling ``dequant_nvfp4``.
"""

from __future__ import annotations

import torch

from imp_core.errors import QuantError
from imp_core.quant._checks import label, require_dtype, require_tensor, target_device
from imp_core.quant.fp4 import e2m1_values, pack_fp4_codes, round_to_e2m1_codes
from imp_core.quant.tables import E2M1_MAX, E4M3_MAX, E4M3_MIN_SUBNORMAL, e4m3_to_float

NVFP4_BLOCK = 16
_FLOAT_SCALE_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def global_scale_from_modelopt(weight_scale_2: torch.Tensor | float) -> torch.Tensor:
    """ModelOpt ``weight_scale_2`` ([] or [1], or [E] for stacked experts) -> float32 multiplier."""
    return _as_fp32(weight_scale_2, "ModelOpt weight_scale_2")


def global_scale_from_compressed_tensors(weight_global_scale: torch.Tensor | float) -> torch.Tensor:
    """compressed-tensors ``weight_global_scale`` (a divisor, [1] or [E]) -> float32 multiplier 1/x."""
    g = _as_fp32(weight_global_scale, "compressed-tensors weight_global_scale")
    if bool((g == 0).any()):
        raise QuantError("compressed-tensors weight_global_scale contains 0; it is a divisor")
    return 1.0 / g


def _as_fp32(value, what: str) -> torch.Tensor:
    if isinstance(value, (int, float)):
        return torch.tensor(float(value), dtype=torch.float32)
    require_tensor(value, what)
    require_dtype(value, _FLOAT_SCALE_DTYPES, what)
    value = value.float()
    return value.reshape(()) if value.numel() == 1 else value


def dequant_nvfp4(
    codes: torch.Tensor,
    block_scale: torch.Tensor,
    global_scale: torch.Tensor | float,
    dtype: torch.dtype = torch.float32,
    device=None,
    *,
    name: str | None = None,
) -> torch.Tensor:
    """Dequantize HF-layout NVFP4 to ``dtype``.

    codes: uint8 [..., N, K/2], element 2j in the low nibble of byte j.
    block_scale: float8_e4m3fn [..., N, K/16].
    global_scale: float32 multiplier, a scalar ([] / [1] / python float) or one per leading index
        ([E] for an [E, N, K/2] expert stack), or [E, G] for G equal row groups per expert.
    Returns [..., N, K]; the arithmetic is float32 (E2M1*E4M3 is exact, one rounding for the global
    multiply), cast to ``dtype`` at the end.
    """
    what = label(name, "NVFP4 weight")
    require_tensor(codes, f"{what} codes")
    require_tensor(block_scale, f"{what} block scale")
    require_dtype(codes, (torch.uint8,), f"{what} codes")
    require_dtype(block_scale, (torch.float8_e4m3fn,), f"{what} block scale")
    if codes.dim() < 2:
        raise QuantError(f"{what} codes must be at least 2-D [N, K/2], got shape {list(codes.shape)}")
    k = codes.shape[-1] * 2
    if k % NVFP4_BLOCK:
        raise QuantError(f"{what} has K={k} columns, not a multiple of the NVFP4 block size 16")
    expected = (*codes.shape[:-1], k // NVFP4_BLOCK)
    if tuple(block_scale.shape) != expected:
        raise QuantError(
            f"{what} block scale has shape {list(block_scale.shape)}, expected {list(expected)} "
            f"for codes of shape {list(codes.shape)}"
        )
    dev = target_device(device, codes)
    lead = codes.shape[:-2]
    g = _global_multiplier(global_scale, lead, what, rows=codes.shape[-2]).to(dev)
    values = e2m1_values(codes.to(dev)).unflatten(-1, (k // NVFP4_BLOCK, NVFP4_BLOCK))
    out = values * e4m3_to_float(block_scale.to(dev)).unsqueeze(-1)
    out = out * (g.reshape(*g.shape, 1, 1, 1) if g.dim() == len(lead) else g.reshape(*lead, -1, 1, 1))
    return out.flatten(-2).to(dtype)


def _global_multiplier(global_scale, lead: torch.Size, what: str, rows: int | None = None) -> torch.Tensor:
    g = _as_fp32(global_scale, f"{what} global scale")
    if g.numel() == 1:
        return g.reshape(())
    groups = g.numel() // max(lead.numel(), 1)
    if rows and len(lead) and groups > 1 and g.numel() == lead.numel() * groups and rows % groups == 0:
        # [E, G]: one global per expert and per equal row group (llm-compressor's repacked gate_up
        # experts store [E, 2]: gate rows, then up rows) -> one multiplier per row [..., N]
        return g.reshape(*lead, groups, 1).expand(*lead, groups, rows // groups).reshape(*lead, rows)
    if g.numel() != lead.numel() or len(lead) == 0:
        raise QuantError(
            f"{what} global scale has {g.numel()} values, expected 1 or one per leading index "
            f"{list(lead)}"
        )
    return g.reshape(lead)


def quantize_nvfp4(
    w: torch.Tensor, *, convention: str = "modelopt", global_scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize ``w`` [..., N, K] (K % 16 == 0) with a producer's max-calibration formula.

    Returns ``(codes uint8 [..., N, K/2], block_scales float8_e4m3fn [..., N, K/16], stored_global)``
    where ``stored_global`` is what that producer writes to disk (one per tensor, float32):
    - "modelopt": ``weight_scale_2 = amax / (6*448)`` (0-d, a multiplier); block scale
      ``fp8(clamp(block_amax / (6*weight_scale_2), 2^-9, 448))`` with all-zero blocks set to 1.0
      (ModelOpt ``NVFP4QTensor.quantize``).
    - "compressed-tensors": ``weight_global_scale = 6*448 / amax`` (shape [1], a divisor); block
      scale ``fp8(clamp(weight_global_scale * block_amax / 6, -448, 448))`` with scales that round
      to 0 set to 0.125 (compressed-tensors ``generate_gparam`` + ``calculate_qparams``).
    ``global_scale`` (modelopt only) replaces the calibrated ``weight_scale_2`` by a fixed
    multiplier, as ModelOpt's ``weights_scaling_factor_2`` argument does (e.g. 1.0 for GGUF NVFP4
    blocks that carry no tensor scale). For fixtures and tests; vectorised torch. On CPU the output
    is bit-identical to the producers' own CPU code; on CUDA, torch divides by a Python scalar via
    its reciprocal, so a last-ulp difference in the global scale can move a few codes (the producers
    do the same there).
    """
    require_tensor(w, "weight to quantize")
    if w.dim() < 1 or w.shape[-1] % NVFP4_BLOCK:
        raise QuantError(f"quantize_nvfp4: last dim must be a multiple of 16, got shape {list(w.shape)}")
    w = w.float()
    blocks = w.unflatten(-1, (w.shape[-1] // NVFP4_BLOCK, NVFP4_BLOCK))
    block_amax = blocks.abs().amax(dim=-1)
    amax = w.abs().amax()
    if convention == "modelopt":
        scale_2 = amax / (E2M1_MAX * E4M3_MAX)
        if global_scale is not None:
            scale_2 = torch.tensor(float(global_scale), dtype=torch.float32)
        per_block = block_amax / (E2M1_MAX * scale_2)
        per_block = torch.where(per_block == 0, torch.ones_like(per_block), per_block)
        block_scale = per_block.clamp(E4M3_MIN_SUBNORMAL, E4M3_MAX).to(torch.float8_e4m3fn)
        divisor = block_scale.float() * scale_2
        stored = scale_2.reshape(())
    elif convention == "compressed-tensors":
        if global_scale is not None:
            raise QuantError("quantize_nvfp4: global_scale is only supported with convention='modelopt'")
        gscale = E4M3_MAX * E2M1_MAX / amax.clamp(min=torch.finfo(torch.float32).tiny)
        per_block = (gscale * (block_amax / E2M1_MAX)).clamp(-E4M3_MAX, E4M3_MAX)
        block_scale = per_block.to(torch.float8_e4m3fn)
        zero = block_scale.float() == 0
        block_scale = torch.where(zero, torch.full_like(per_block, 0.125), block_scale.float()).to(
            torch.float8_e4m3fn
        )
        divisor = block_scale.float() / gscale
        stored = gscale.reshape(1)
    else:
        raise QuantError(
            f"quantize_nvfp4: unknown convention {convention!r}, expected 'modelopt' or 'compressed-tensors'"
        )
    scaled = blocks / divisor.unsqueeze(-1)
    codes = round_to_e2m1_codes(scaled.flatten(-2))
    return pack_fp4_codes(codes), block_scale, stored
