"""E2M1 (FP4) code packing, unpacking and round-to-nearest, shared by NVFP4 and MXFP4.

HF checkpoints (ModelOpt, compressed-tensors, MX) pack two codes per byte with the even element in
the LOW nibble (docs/formats.md, "NVFP4"). ggml blocks use first-half/second-half order instead; that lives
in gguf_fp4.py.
"""

from __future__ import annotations

import torch

from imp_core.quant.tables import E2M1_MAX, cached_table, e2m1_table

# Round-to-nearest boundaries between consecutive E2M1 magnitudes; a value exactly on a boundary
# goes to the even code (0.25->0, 0.75->1.0, 1.25->1.0, 1.75->2.0, 2.5->2.0, 3.5->4.0, 5->4.0),
# docs/formats.md, "Element formats".
_BOUNDS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


def unpack_fp4_codes(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., K/2] -> int64 codes [..., K], element 2j from the low nibble of byte j."""
    low = packed & 0x0F
    high = packed >> 4
    return torch.stack([low, high], dim=-1).flatten(-2).long()


def pack_fp4_codes(codes: torch.Tensor) -> torch.Tensor:
    """Integer codes [..., K] (K even, values 0..15) -> uint8 [..., K/2], even element low."""
    codes = codes.to(torch.uint8)
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def _byte_pair_table(device) -> torch.Tensor:
    """float32 [256, 2]: the (low, high) nibble values of every byte, so one gather per byte."""

    def build() -> torch.Tensor:
        b = torch.arange(256)
        return e2m1_table()[torch.stack([b & 0x0F, b >> 4], dim=-1)]

    return cached_table("e2m1_byte_pairs", device, build)


def e2m1_values(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., K/2] -> float32 [..., K] E2M1 values (HF even/odd nibble order)."""
    return _byte_pair_table(packed.device)[packed.long()].flatten(-2)


def round_to_e2m1_codes(x: torch.Tensor) -> torch.Tensor:
    """Round float values (already divided by their scale) to E2M1 codes, uint8 in 0..15.

    Saturates at +-6; ties go to the even code; the sign bit follows the sign of ``x`` (so a tiny
    negative value becomes code 8, "-0"), as both ModelOpt and compressed-tensors do.
    """
    x = x.float()
    mag = x.abs().clamp(max=E2M1_MAX)
    bounds = torch.tensor(_BOUNDS, dtype=torch.float32, device=x.device)
    idx = torch.searchsorted(bounds, mag.contiguous())  # first bound >= mag: ties go down...
    # ...which is the even code except at the odd-indexed bounds 0.75, 1.75, 3.5, where it rounds up.
    on_odd_bound = (mag == 0.75) | (mag == 1.75) | (mag == 3.5)
    idx = idx + on_odd_bound.long()
    sign = (x < 0).long() << 3
    return (idx | sign).to(torch.uint8)
