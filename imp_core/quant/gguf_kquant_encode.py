"""Simple numpy block encoders for the GGUF K-quants (gguf-py 0.19 can only decode them).

For building fixtures and tests, not for producing good GGUF files: each sub-block takes the
plain max-based scale (and min, for the asymmetric types) and its 6/8/4-bit scale codes are
rounded against one fp16 super-block scale; llama.cpp's iterative scale search is not
reproduced. Layouts follow docs/formats.md "GGUF block types" exactly (checked against gguf-py's decoder).
Each ``encode_*`` maps float32 [n_blocks, 256] -> uint8 [n_blocks, block_bytes].
"""

from __future__ import annotations

import numpy as np

QK_K = 256


def _f16(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the fp16 bytes [nb, 2], the value they decode to as float32 [nb, 1])."""
    h = x.astype(np.float16).reshape(-1, 1)
    return h.view(np.uint8).reshape(-1, 2), h.astype(np.float32)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, num / np.where(den != 0, den, 1), 0).astype(np.float32)


def _asymmetric(xs: np.ndarray, qmax: int, scale_bits: int):
    """Sub-block scale/min for ``x ~ d*sc*q - dmin*mn`` with q in 0..qmax and 2^scale_bits-1 codes.

    xs: float32 [nb, n_sub, sub_len]. Returns (d bytes, dmin bytes, sc, mn, q)."""
    smax = (1 << scale_bits) - 1
    mn_f = np.maximum(0.0, -xs.min(axis=-1))
    sc_f = (xs.max(axis=-1) + mn_f) / qmax
    d_bytes, d = _f16(sc_f.max(axis=-1) / smax)
    dmin_bytes, dmin = _f16(mn_f.max(axis=-1) / smax)
    sc = np.clip(np.round(_safe_div(sc_f, d)), 0, smax)
    mn = np.clip(np.round(_safe_div(mn_f, dmin)), 0, smax)
    step = (d * sc)[..., None]
    offset = (dmin * mn)[..., None]
    q = np.clip(np.round(_safe_div(xs + offset, step)), 0, qmax)
    return d_bytes, dmin_bytes, sc.astype(np.uint8), mn.astype(np.uint8), q.astype(np.uint8)


def _symmetric(xs: np.ndarray, qmin: int, scale_max: int):
    """Signed sub-block scales for ``x ~ d*sc*q`` with q in qmin..-qmin-1 (the largest-magnitude
    element maps to qmin), scale codes in -scale_max-1..scale_max. Returns (d bytes, sc, q)."""
    imax = np.abs(xs).argmax(axis=-1)[..., None]
    s_f = np.take_along_axis(xs, imax, axis=-1)[..., 0] / qmin
    d_bytes, d = _f16(np.abs(s_f).max(axis=-1) / scale_max)
    sc = np.clip(np.round(_safe_div(s_f, d)), -scale_max - 1, scale_max)
    q = np.clip(np.round(_safe_div(xs, (d * sc)[..., None])), qmin, -qmin - 1)
    return d_bytes, sc.astype(np.int8), q.astype(np.int8)


def _pack_crumbs(q: np.ndarray) -> np.ndarray:
    """2-bit codes [nb, 256] (element 128h+32j+i) -> [nb, 64], byte 32h+i holds field j at bits 2j."""
    q = q.reshape(-1, 2, 4, 32).astype(np.uint8)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64)


def _pack_bit_planes(bits: np.ndarray) -> np.ndarray:
    """1-bit codes [nb, 8, 32] -> [nb, 32], bit p of byte i = bits[p, i]."""
    shifts = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    return np.bitwise_or.reduce(bits.astype(np.uint8) << shifts, axis=1)


def _pack_k4_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """8 six-bit (scale, min) pairs [nb, 8] -> the 12-byte Q4_K/Q5_K packing."""
    lo = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    mid = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    hi = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    return np.concatenate([lo, mid, hi], axis=-1).astype(np.uint8)


def _pack_nibble_pairs(q: np.ndarray) -> np.ndarray:
    """4-bit codes [nb, 8, 32] -> [nb, 128]: byte 32c+i = q[2c, i] | q[2c+1, i] << 4."""
    q = q.reshape(-1, 4, 2, 32).astype(np.uint8)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)


def encode_q2_k(x: np.ndarray) -> np.ndarray:
    d, dmin, sc, mn, q = _asymmetric(x.reshape(-1, 16, 16), qmax=3, scale_bits=4)
    scales = sc | (mn << 4)
    return np.concatenate([scales, _pack_crumbs(q), d, dmin], axis=-1)


def encode_q3_k(x: np.ndarray) -> np.ndarray:
    d, sc, q = _symmetric(x.reshape(-1, 16, 16), qmin=-4, scale_max=31)
    u = (q.astype(np.int16) + 4).astype(np.uint8).reshape(-1, QK_K)  # 0..7
    hmask = _pack_bit_planes((u >> 2).reshape(-1, 8, 32))
    qs = _pack_crumbs(u & 3)
    s6 = (sc.astype(np.int16) + 32).astype(np.uint8)  # [nb, 16], 0..63
    low = (s6[:, :8] & 0x0F) | ((s6[:, 8:] & 0x0F) << 4)
    top = (s6 >> 4).reshape(-1, 4, 4)  # [nb, k//4, k%4]
    high = top[:, 0] | (top[:, 1] << 2) | (top[:, 2] << 4) | (top[:, 3] << 6)
    return np.concatenate([hmask, qs, low, high, d], axis=-1)


def encode_q4_k(x: np.ndarray) -> np.ndarray:
    d, dmin, sc, mn, q = _asymmetric(x.reshape(-1, 8, 32), qmax=15, scale_bits=6)
    return np.concatenate([d, dmin, _pack_k4_scales(sc, mn), _pack_nibble_pairs(q)], axis=-1)


def encode_q5_k(x: np.ndarray) -> np.ndarray:
    d, dmin, sc, mn, q = _asymmetric(x.reshape(-1, 8, 32), qmax=31, scale_bits=6)
    qh = _pack_bit_planes(q >> 4)
    return np.concatenate([d, dmin, _pack_k4_scales(sc, mn), qh, _pack_nibble_pairs(q & 0x0F)], axis=-1)


def encode_q6_k(x: np.ndarray) -> np.ndarray:
    d, sc, q = _symmetric(x.reshape(-1, 16, 16), qmin=-32, scale_max=127)
    u = (q.astype(np.int16) + 32).astype(np.uint8).reshape(-1, 2, 4, 32)  # [nb, h, j, i], 0..63
    lo, hi = u & 0x0F, u >> 4
    ql = (lo[:, :, 0:2] | (lo[:, :, 2:4] << 4)).reshape(-1, 128)
    qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(-1, 64)
    return np.concatenate([ql, qh, sc.view(np.uint8), d], axis=-1)


K_ENCODERS = {
    "Q2_K": encode_q2_k,
    "Q3_K": encode_q3_k,
    "Q4_K": encode_q4_k,
    "Q5_K": encode_q5_k,
    "Q6_K": encode_q6_k,
}
