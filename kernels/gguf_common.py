"""Pieces shared by the GGUF GEMV kernels (native blocks, no dequantised copy).

GGUF blocks are 34 (Q8_0), 144 (Q4_K) or 210 (Q6_K) bytes, so rows and blocks are not 16-byte
aligned in general. Each warp owns one output row and walks it in spans of whole blocks: the
lanes copy a span with coalesced 16-byte loads from the 16-byte-aligned address at or below its
start into the warp's slice of shared memory (the next span's loads are issued before the
current span is computed), then each lane decodes its block(s) from shared memory and
multiplies with bf16 activations read from L1 in fp32. A warp butterfly-sum finishes the row.

The raw buffer must be readable up to 16 bytes past the last row (``gguf_device_buffer`` pads it).
"""

from __future__ import annotations

import numpy as np
import torch

from imp_kernels import ptx
from imp_kernels.launch import device_jit

__all__ = ["SPAN_WORDS", "span_load", "span_store", "word_at", "bf16_lo", "bf16_hi", "warp_sum",
           "gguf_device_buffer", "load_x32"]

SPAN_WORDS = 384  # 3 x 32 lanes x 16 bytes per warp (a span is <= 1152 + 15 bytes)


def gguf_device_buffer(raw: torch.Tensor, device=None) -> torch.Tensor:
    """Raw GGUF bytes -> a 16-byte-padded int32 buffer on ``device`` (a byte copy, not a dequant)."""
    flat = raw.reshape(-1)
    n = flat.numel()
    padded = torch.zeros(((n + 15) // 16 + 1) * 16, dtype=torch.uint8, device=device or flat.device)
    padded[:n] = flat.to(padded.device)
    return padded.view(torch.int32)


@device_jit(inline="always")
def span_load(raw32, start, nbytes, lane):
    """Issue this lane's (up to 3) 16-byte loads of the span [start, start+nbytes)."""
    a = start & ~15
    off = start - a
    n16 = (off + nbytes + 15) >> 4
    zw = np.uint32(0)
    q0, q1, q2 = (zw, zw, zw, zw), (zw, zw, zw, zw), (zw, zw, zw, zw)
    base = a >> 2
    if lane < n16:
        q0 = ptx.ld_v4(raw32, base + 4 * lane)
    if lane + 32 < n16:
        q1 = ptx.ld_v4(raw32, base + 4 * (lane + 32))
    if lane + 64 < n16:
        q2 = ptx.ld_v4(raw32, base + 4 * (lane + 64))
    return q0, q1, q2, off


@device_jit(inline="always")
def span_store(sm, warp, lane, q0, q1, q2):
    for i in range(4):
        sm[warp, 4 * lane + i] = q0[i]
        sm[warp, 4 * (lane + 32) + i] = q1[i]
        sm[warp, 4 * (lane + 64) + i] = q2[i]


@device_jit(inline="always")
def word_at(sm, warp, bytepos):
    """The little-endian 32-bit word starting at any byte position of the warp's span."""
    wi = bytepos >> 2
    sh = (bytepos & 3) * 8
    lo = np.uint64(sm[warp, wi])
    hi = np.uint64(sm[warp, wi + 1])
    return np.uint32((((hi << np.uint64(32)) | lo) >> np.uint64(sh)) & np.uint64(0xFFFFFFFF))


@device_jit(inline="always")
def bf16_lo(w):
    return ptx.bits_to_f32(np.uint32((int(w) & 0xFFFF) << 16))


@device_jit(inline="always")
def bf16_hi(w):
    return ptx.bits_to_f32(np.uint32(int(w) & 0xFFFF0000))


@device_jit(inline="always")
def load_x32(x32, m, k, col):
    """bf16 x[m, col:col+32] as 16 words (4 quads); col % 8 == 0."""
    i = (m * k + col) >> 1
    return (ptx.ld_v4_cached(x32, i), ptx.ld_v4_cached(x32, i + 4), ptx.ld_v4_cached(x32, i + 8),
            ptx.ld_v4_cached(x32, i + 12))


@device_jit(inline="always")
def warp_sum(v):
    v += ptx.shfl_xor_f32(v, 16)
    v += ptx.shfl_xor_f32(v, 8)
    v += ptx.shfl_xor_f32(v, 4)
    v += ptx.shfl_xor_f32(v, 2)
    v += ptx.shfl_xor_f32(v, 1)
    return v
