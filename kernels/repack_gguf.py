"""GGUF K-quant / Q8_0 blocks -> the tensor-core GEMV layouts of ``gemv_gguf_tc``.

Every GGUF type the GEMV serves is an integer code times a per-group scale, minus a per-group
offset: ``w = s * q - m`` with
  Q4_K: q = 4-bit code (0..15), groups of 32, s = d * scale6, m = dmin * min6;
  Q6_K: q = 6-bit code - 32 (-32..31), groups of 16, s = d * int8 scale, m = 0;
  Q8_0: q = int8 code, groups of 32, s = d, m = 0.
The codes are moved, never changed; s and m are stored as f16 times one power of two per tensor,
2^P, chosen so the largest lands near the top of f16's range (real d are ~1e-5, below f16's
normal range; the GEMV multiplies its fp32 sums by 2^-P, exactly). The product of d with a 6- or
8-bit integer scale is rounded once to 11 bits, finer than the bf16 the reference path
dequantises to. ``tc_form`` says when one exponent cannot hold a tensor's scales (they would
span more binades than f16 keeps at that precision) and the caller keeps the native-block kernel.

Two layouts, both on the lane map of ``repack`` (lane = 4g + t, rows g and g + 8 of a 16-row tile):
  "q4" (Q4_K), chunk = 64 columns, lane t owns columns 16t..16t+15 (half a group of 32):
    codes  int32 [NT, KC, 32, 4]: word s = rows (g, g+8) x columns 16t + 4s + (0..3); the f16x2 A
           fragment v (pairs (g, c0..1), (g+8, c0..1), (g, c2..3), (g+8, c2..3)) sits in bits
           4v..4v+3 (first element) and 16+4v..16+4v+3 (second), so ``(w >> 4v) & 0x000F000F``
           isolates it;
    scales int32 [NT, KC, 32]: lane (g, t) holds f16x2 (s, -m) of row g + 8(t & 1), group
           2kc + t//2; its neighbour lane t^1 holds the other row's (one shuffle swaps them).
  "q8" (Q6_K, Q8_0), chunk = 32 columns, lane t owns columns 8t..8t+7:
    codes  int32 [NT, KC, 32, 4]: ``repack.fp8_tile`` of the bytes q + 128;
    scales int16 [NT, KC, 32]: f16 s of row g + 8(t & 1), group of 16 ``2kc + t//2`` (Q8_0's
           groups of 32 give both halves the same s).
NT is even and K padded to the chunk; padding holds zero codes and zero scales (so w = 0).
"""

from __future__ import annotations

import math

import torch

from imp_kernels.errors import KernelError
from imp_kernels.repack import _pad2, _to_i32, fp8_tile

__all__ = ["TC_TYPES", "tc_form", "tc_exponent", "gguf_affine", "tc_tile", "tc_untile_dequant"]

TC_TYPES = {"Q4_K": "q4", "Q6_K": "q8", "Q8_0": "q8"}
_BLOCK = {"Q8_0": (32, 34), "Q4_K": (256, 144), "Q6_K": (256, 210)}
# the largest scaled s or m: q4 weights s q - m stay below 15 * 2^11 + 2^11 < 65504, q8 ones |s| * 128
_TOP = {"q4": 2.0 ** 11, "q8": 2.0 ** 8}
# the smallest scaled nonzero s or m: f16's spacing there is 2^-24, a relative rounding <= 2^-9
_FLOOR = 2.0 ** -16
_SLAB_ROWS = 2048  # rows converted at a time: bounds the int64 temporaries to ~100 MB at K = 5120


def _f16(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.float16).float()


def gguf_affine(raw_u8: torch.Tensor, qtype: str, n: int, k: int):
    """Native blocks of ``n`` rows -> (q int16 [n, k], s float32 [n, k/g], m float32 or None, g)
    with ``w = s * q - m`` per group of g columns (see the module doc)."""
    if qtype not in _BLOCK:
        raise KernelError(f"GGUF type {qtype!r} has no tensor-core form; supported {sorted(_BLOCK)}")
    elems, nbytes = _BLOCK[qtype]
    if k % elems:
        raise KernelError(f"GGUF {qtype} tensor has {k} columns, not a multiple of its block of {elems}")
    b = raw_u8.reshape(-1)[: n * (k // elems) * nbytes].reshape(n, k // elems, nbytes).long()
    if qtype == "Q8_0":
        d = _f16(b[..., 0:2].to(torch.uint8))
        q = b[..., 2:].to(torch.uint8).view(torch.int8).to(torch.int16)
        return q.reshape(n, k), d.reshape(n, -1), None, 32
    if qtype == "Q4_K":
        d, dmin = _f16(b[..., 0:2].to(torch.uint8)), _f16(b[..., 2:4].to(torch.uint8))
        sb = b[..., 4:16]
        sc = torch.cat([sb[..., 0:4] & 63, (sb[..., 8:12] & 15) | ((sb[..., 0:4] >> 6) << 4)], -1).float()
        mn = torch.cat([sb[..., 4:8] & 63, (sb[..., 8:12] >> 4) | ((sb[..., 4:8] >> 6) << 4)], -1).float()
        qs = b[..., 16:].reshape(n, -1, 4, 32)  # 32-byte chunk c holds groups 2c (low nibbles), 2c+1
        q = torch.stack([qs & 15, qs >> 4], dim=3).reshape(n, k).to(torch.int16)
        return q, (d * sc).reshape(n, -1), (dmin * mn).reshape(n, -1), 32
    ql, qh = b[..., 0:128], b[..., 128:192]
    sc = b[..., 192:208].to(torch.uint8).view(torch.int8).float()
    d = _f16(b[..., 208:210].to(torch.uint8))
    q = torch.empty(n, k // 256, 256, dtype=torch.int16, device=raw_u8.device)
    for h in range(2):
        for j in range(4):
            lo = (ql[..., 64 * h + 32 * (j % 2): 64 * h + 32 * (j % 2) + 32] >> (4 * (j // 2))) & 15
            hi = (qh[..., 32 * h: 32 * h + 32] >> (2 * j)) & 3
            q[..., 128 * h + 32 * j: 128 * h + 32 * j + 32] = ((lo | (hi << 4)) - 32).to(torch.int16)
    return q.reshape(n, k), (d * sc).reshape(n, -1), None, 16


def _scale_range(rows: torch.Tensor, qtype: str, n: int, k: int) -> tuple[float, float]:
    """(largest |s| or |m|, smallest nonzero one) of a tensor, read one slab at a time."""
    hi, lo = 0.0, float("inf")
    for r0 in range(0, n, _SLAB_ROWS):
        r1 = min(n, r0 + _SLAB_ROWS)
        _, s, m, _ = gguf_affine(rows[r0:r1], qtype, r1 - r0, k)
        for v in (s, m) if m is not None else (s,):
            a = v.abs()
            if not bool(torch.isfinite(a).all()):
                return float("inf"), lo
            hi = max(hi, float(a.max()))
            nz = a[a > 0]
            if nz.numel():
                lo = min(lo, float(nz.min()))
    return hi, lo


def tc_exponent(raw_u8: torch.Tensor, qtype: str, n: int, k: int) -> tuple[int | None, str]:
    """(P, why): the power of two the f16 scales are stored times, or None when one P cannot hold
    every scale of the tensor at f16 precision (or a scale is not finite)."""
    kind = TC_TYPES.get(qtype)
    if kind is None:
        return None, f"GGUF {qtype} has no tensor-core form"
    hi, lo = _scale_range(raw_u8.reshape(n, -1), qtype, n, k)
    if not math.isfinite(hi):
        return None, f"{qtype} scales are not finite"
    if hi == 0:
        return 0, f"{qtype} scales are all zero"
    p = math.floor(math.log2(_TOP[kind] / hi))
    if math.isfinite(lo) and lo * 2.0 ** p < _FLOOR:
        return None, (f"{qtype} scales span {hi / lo:.3g}x, more than one f16 exponent range keeps at 11 bits")
    return p, f"{qtype} scales stored as f16 x 2^{p}"


def tc_form(raw_u8: torch.Tensor, qtype: str, n: int, k: int) -> tuple[str | None, str]:
    """("q4" | "q8", why) when the tensor-core GEMV computes this tensor within f16 rounding,
    (None, why not) otherwise."""
    p, why = tc_exponent(raw_u8, qtype, n, k)
    return (TC_TYPES[qtype] if p is not None else None), why


def _scale_lanes(v: torch.Tensor, nt: int, kc: int) -> torch.Tensor:
    """[nt*16, 2*kc] per-row group values -> [nt, kc, 32] in the lane order of the module doc."""
    v = v.view(nt, 2, 8, kc, 2).permute(0, 3, 2, 4, 1)  # nt kc g group-in-chunk h -> lane t = 2*grp + h
    return v.reshape(nt, kc, 32)


def _f16_bits(v: torch.Tensor) -> torch.Tensor:
    return v.to(torch.float16).view(torch.int16).to(torch.int64) & 0xFFFF


def _f16_from_bits(b: torch.Tensor) -> torch.Tensor:
    b = b & 0xFFFF
    return torch.where(b >= 2 ** 15, b - 2 ** 16, b).to(torch.int16).view(torch.float16).double()


_VIEWS = ((0, 0), (1, 0), (0, 2), (1, 2))  # (row half h, first column j) of f16x2 fragment v


def _tile_slab(q, s, m, g, kind, p):
    rows, k = q.shape
    s = s * 2.0 ** p
    m = m * 2.0 ** p if m is not None else None
    nt = -(-rows // 32) * 2
    if kind == "q4":
        kc = -(-k // 64)
        qq = _pad2(q, nt * 16, kc * 64).to(torch.int64).view(nt, 2, 8, kc, 4, 4, 4)
        qq = qq.permute(0, 3, 2, 4, 5, 1, 6)  # nt kc g t s h j
        word = torch.zeros(qq.shape[:-2], dtype=torch.int64, device=q.device)
        for v, (h, j) in enumerate(_VIEWS):
            word |= qq[..., h, j] << (4 * v)
            word |= qq[..., h, j + 1] << (16 + 4 * v)
        codes = _to_i32(word.reshape(nt, kc, 32, 4))
        sw = _scale_lanes(_f16_bits(_pad2(s, nt * 16, kc * 2)), nt, kc)
        mw = _scale_lanes(_f16_bits(-_pad2(m, nt * 16, kc * 2)), nt, kc)
        return codes, _to_i32(sw | (mw << 16))
    kc = -(-k // 32)
    codes = fp8_tile((q + 128).to(torch.uint8))
    s16 = s.repeat_interleave(2, dim=1) if g == 32 else s  # Q8_0: one scale for both 16-column halves
    sw = _scale_lanes(_f16_bits(_pad2(s16, nt * 16, kc * 2)), nt, kc)
    return codes, torch.where(sw >= 2 ** 15, sw - 2 ** 16, sw).to(torch.int16)


def tc_tile(raw_u8: torch.Tensor, qtype: str, n: int, k: int, exponent: int | None = None
            ) -> tuple[str, torch.Tensor, torch.Tensor, float]:
    """Native GGUF rows -> (kind, codes, scales, unscale = 2^-P) in the layout of the module doc, on
    raw's device, converted slab by slab (``exponent``: P from ``tc_exponent``, computed if None)."""
    kind = TC_TYPES.get(qtype)
    if kind is None:
        raise KernelError(f"GGUF type {qtype!r} has no tensor-core form; supported {sorted(TC_TYPES)}")
    if exponent is None:
        exponent, why = tc_exponent(raw_u8, qtype, n, k)
        if exponent is None:
            raise KernelError(f"GGUF {qtype} [{n}, {k}] has no tensor-core form: {why}")
    rows = raw_u8.reshape(n, -1)
    codes, scales = [], []
    for r0 in range(0, n, _SLAB_ROWS):  # a multiple of 32 rows: slabs hold whole tile pairs
        r1 = min(n, r0 + _SLAB_ROWS)
        q, s, m, g = gguf_affine(rows[r0:r1], qtype, r1 - r0, k)
        c, sc = _tile_slab(q, s, m, g, kind, exponent)
        codes.append(c)
        scales.append(sc)
    return kind, torch.cat(codes).contiguous(), torch.cat(scales).contiguous(), 2.0 ** -exponent


def tc_untile_dequant(kind: str, codes: torch.Tensor, scales: torch.Tensor, n: int, k: int,
                      unscale: float = 1.0) -> torch.Tensor:
    """What the kernel multiplies with: float32 [n, k] = f16(s' q - m') rounded once, times
    ``unscale``, from the tiled tensors (the inverse of ``tc_tile``'s moves; for references and tests)."""
    nt, kc = codes.shape[:2]
    w = codes.to(torch.int64) & 0xFFFFFFFF
    sv = scales.to(torch.int64) & 0xFFFFFFFF
    sv = sv.view(nt, kc, 8, 2, 2).permute(0, 4, 2, 1, 3).reshape(nt * 16, kc * 2)  # rows x groups
    s = _f16_from_bits(sv)
    if kind == "q4":
        q = torch.zeros(nt, kc, 32, 4, 2, 4, dtype=torch.int64, device=w.device)
        for v, (h, j) in enumerate(_VIEWS):
            q[..., h, j] = (w >> (4 * v)) & 15
            q[..., h, j + 1] = (w >> (16 + 4 * v)) & 15
        q = q.view(nt, kc, 8, 4, 4, 2, 4).permute(0, 5, 2, 1, 3, 4, 6).reshape(nt * 16, kc * 64)
        negm = _f16_from_bits(sv >> 16)
        full = q.double() * s.repeat_interleave(32, 1) + negm.repeat_interleave(32, 1)
    else:
        b = torch.stack([(w >> (8 * i)) & 0xFF for i in range(4)], dim=-1)
        q = b.view(nt, kc, 8, 4, 2, 2, 4).permute(0, 5, 2, 1, 3, 4, 6).reshape(nt * 16, kc * 32) - 128
        full = q.double() * s.repeat_interleave(16, 1)
    return (full.to(torch.float16).float()[:n, :k] * unscale).contiguous()
