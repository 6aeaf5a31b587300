"""GGUF GEMV on the native blocks: Q8_0, Q4_K, Q6_K. ``out = x @ dequant(W)^T (+ residual)``.

W is the raw GGUF byte buffer of a [N, K] tensor (row-major: each row is K/block ggml blocks) in a
16-byte-padded int32 buffer (``gguf_common.gguf_device_buffer``). One warp per output row, 8 rows
per block; see ``gguf_common`` for the staging scheme. Lane work per span:
  Q8_0: 32 blocks of 32 (one block per lane);  Q4_K: 8 super-blocks (lane = super-block x one
  pair of 32-element sub-blocks, whose 6-bit scale/min are unpacked per lane);
  Q6_K: 4 super-blocks (lane = super-block x 32 elements: one (h, j) group of ql/qh bits).
Integers become fp32 exactly (magic-number conversion), products and sums are fp32.
"""

from __future__ import annotations

import numpy as np
import torch

from imp_kernels import ptx
from imp_kernels.compat import cuda
from imp_kernels.errors import KernelError
from imp_kernels.gguf_common import (SPAN_WORDS, bf16_hi, bf16_lo, load_x32, span_load, span_store,
                                     warp_sum, word_at)
from imp_kernels.launch import device_jit, jit, launch, require_aligned
from imp_kernels.mma_frag import store_out
from imp_kernels.repack import GGUF_BLOCKS

__all__ = ["warmup", "gemv_gguf", "gemv_gguf_ref", "SUPPORTED"]

SUPPORTED = ("Q8_0", "Q4_K", "Q6_K")
ROWS = 8  # warps (= rows) per block
MAX_M = 8
_SM_WORDS = SPAN_WORDS + 8  # word_at reads one word past a span
_MAGIC = np.float32(8388608.0)  # 2^23


@device_jit(inline="always")
def _u2f(v):
    """A small non-negative integer (< 2^23) -> float32, exactly, without I2F."""
    return ptx.bits_to_f32(np.uint32(0x4B000000 | int(v))) - _MAGIC


@device_jit(inline="always")
def _i8(w, sh):
    return _u2f(((int(w) >> sh) & 0xFF) ^ 0x80) - np.float32(128.0)


# ------------------------------------------------------------------------------------- Q8_0
@device_jit(inline="always")
def _q8_0_lane(sm, warp, p, x32, m, k, col):
    d = ptx.f16_lo(np.uint32(int(word_at(sm, warp, p)) & 0xFFFF))
    xq = load_x32(x32, m, k, col)
    s = np.float32(0.0)
    for j in range(8):
        w = word_at(sm, warp, p + 2 + 4 * j)
        x0 = xq[j >> 1][(j & 1) * 2]
        x1 = xq[j >> 1][(j & 1) * 2 + 1]
        s += _i8(w, 0) * bf16_lo(x0) + _i8(w, 8) * bf16_hi(x0) + _i8(w, 16) * bf16_lo(x1) \
            + _i8(w, 24) * bf16_hi(x1)
    return s * d


def _q8_0_py(x32, m_rows, k, raw32, rb, n_rows, out, out_f32, res, has_res):
    sm = cuda.shared.array((ROWS, _SM_WORDS), np.uint32)
    acc = cuda.local.array(MAX_M, np.float32)
    warp = cuda.threadIdx.x >> 5
    lane = cuda.threadIdx.x & 31
    row = cuda.blockIdx.x * ROWS + warp
    rowc = min(row, n_rows - 1)
    for i in range(MAX_M):
        acc[i] = np.float32(0.0)
    nblk = k >> 5
    nspan = (nblk + 31) >> 5
    q0, q1, q2, off = span_load(raw32, rowc * rb, min(32, nblk) * 34, lane)
    for sp in range(nspan):
        b0 = sp * 32
        nb = min(32, nblk - b0)
        span_store(sm, warp, lane, q0, q1, q2)
        cur_off = off
        if sp + 1 < nspan:
            q0, q1, q2, off = span_load(raw32, rowc * rb + (b0 + 32) * 34,
                                        min(32, nblk - b0 - 32) * 34, lane)
        ptx.syncwarp()
        if lane < nb:
            for m in range(m_rows):
                acc[m] += _q8_0_lane(sm, warp, cur_off + 34 * lane, x32, m, k, (b0 + lane) * 32)
        ptx.syncwarp()
    for m in range(m_rows):
        v = warp_sum(acc[m])
        if lane == 0 and row < n_rows:
            store_out(out, out_f32, res, has_res, m, n_rows, row, v)


# ------------------------------------------------------------------------------------- Q4_K
@device_jit(inline="always")
def _sbyte(s0, s1, s2, i):
    w = s0
    if i >= 8:
        w = s2
    elif i >= 4:
        w = s1
    return (int(w) >> (8 * (i & 3))) & 0xFF


@device_jit(inline="always")
def _k4_scale_min(j, s0, s1, s2):
    if j < 4:
        sc = _sbyte(s0, s1, s2, j) & 63
        mn = _sbyte(s0, s1, s2, j + 4) & 63
    else:
        sc = (_sbyte(s0, s1, s2, j + 4) & 15) | ((_sbyte(s0, s1, s2, j - 4) >> 6) << 4)
        mn = (_sbyte(s0, s1, s2, j + 4) >> 4) | ((_sbyte(s0, s1, s2, j) >> 6) << 4)
    return _u2f(sc), _u2f(mn)


@device_jit(inline="always")
def _q4_half(sm, warp, pq, nsh, xq):
    """sum(q * x) and sum(x) over one 32-element sub-block: nibbles at shift nsh of 32 qs bytes."""
    qs = np.float32(0.0)
    xs = np.float32(0.0)
    for j in range(8):
        wi = int(word_at(sm, warp, pq + 4 * j)) >> nsh
        a0 = xq[j >> 1][(j & 1) * 2]
        a1 = xq[j >> 1][(j & 1) * 2 + 1]
        x0, x1, x2, x3 = bf16_lo(a0), bf16_hi(a0), bf16_lo(a1), bf16_hi(a1)
        qs += _u2f(wi & 15) * x0 + _u2f((wi >> 8) & 15) * x1 + _u2f((wi >> 16) & 15) * x2 \
            + _u2f((wi >> 24) & 15) * x3
        xs += (x0 + x1) + (x2 + x3)
    return qs, xs


@device_jit(inline="always")
def _q4_k_lane(sm, warp, p, c, x32, m, k, col):
    w0 = word_at(sm, warp, p)
    d = ptx.f16_lo(w0)
    dmin = ptx.f16_hi(w0)
    s0 = word_at(sm, warp, p + 4)
    s1 = word_at(sm, warp, p + 8)
    s2 = word_at(sm, warp, p + 12)
    sc1, mn1 = _k4_scale_min(2 * c, s0, s1, s2)
    sc2, mn2 = _k4_scale_min(2 * c + 1, s0, s1, s2)
    q1, x1 = _q4_half(sm, warp, p + 16 + 32 * c, 0, load_x32(x32, m, k, col))
    q2, x2 = _q4_half(sm, warp, p + 16 + 32 * c, 4, load_x32(x32, m, k, col + 32))
    return d * (sc1 * q1 + sc2 * q2) - dmin * (mn1 * x1 + mn2 * x2)


def _q4_k_py(x32, m_rows, k, raw32, rb, n_rows, out, out_f32, res, has_res):
    sm = cuda.shared.array((ROWS, _SM_WORDS), np.uint32)
    acc = cuda.local.array(MAX_M, np.float32)
    warp = cuda.threadIdx.x >> 5
    lane = cuda.threadIdx.x & 31
    row = cuda.blockIdx.x * ROWS + warp
    rowc = min(row, n_rows - 1)
    for i in range(MAX_M):
        acc[i] = np.float32(0.0)
    nsb = k >> 8
    nspan = (nsb + 7) >> 3
    sb = lane >> 2
    c = lane & 3
    q0, q1, q2, off = span_load(raw32, rowc * rb, min(8, nsb) * 144, lane)
    for sp in range(nspan):
        b0 = sp * 8
        nb = min(8, nsb - b0)
        span_store(sm, warp, lane, q0, q1, q2)
        cur_off = off
        if sp + 1 < nspan:
            q0, q1, q2, off = span_load(raw32, rowc * rb + (b0 + 8) * 144, min(8, nsb - b0 - 8) * 144, lane)
        ptx.syncwarp()
        if sb < nb:
            for m in range(m_rows):
                acc[m] += _q4_k_lane(sm, warp, cur_off + 144 * sb, c, x32, m, k, (b0 + sb) * 256 + 64 * c)
        ptx.syncwarp()
    for m in range(m_rows):
        v = warp_sum(acc[m])
        if lane == 0 and row < n_rows:
            store_out(out, out_f32, res, has_res, m, n_rows, row, v)


# ------------------------------------------------------------------------------------- Q6_K
@device_jit(inline="always")
def _q6_k_lane(sm, warp, p, h, j, x32, m, k, col):
    pl = p + 64 * h + 32 * (j & 1)
    ph = p + 128 + 32 * h
    nsh = 4 * (j >> 1)
    hsh = 2 * j
    scw = int(word_at(sm, warp, p + 192 + 8 * h + 2 * j))
    sca = np.float32(((scw & 0xFF) ^ 0x80) - 128)
    scb = np.float32((((scw >> 8) & 0xFF) ^ 0x80) - 128)
    d = ptx.f16_lo(np.uint32(int(word_at(sm, warp, p + 208)) & 0xFFFF))
    xq = load_x32(x32, m, k, col)
    sa = np.float32(0.0)
    sb = np.float32(0.0)
    off32 = _MAGIC + np.float32(32.0)
    for w in range(8):
        lw = int(word_at(sm, warp, pl + 4 * w))
        hw = int(word_at(sm, warp, ph + 4 * w))
        x0 = xq[w >> 1][(w & 1) * 2]
        x1 = xq[w >> 1][(w & 1) * 2 + 1]
        t = np.float32(0.0)
        for b in range(4):
            q = ((lw >> (8 * b + nsh)) & 15) | (((hw >> (8 * b + hsh)) & 3) << 4)
            qf = ptx.bits_to_f32(np.uint32(0x4B000000 | q)) - off32
            xw = x0 if b < 2 else x1
            xv = bf16_lo(xw) if (b & 1) == 0 else bf16_hi(xw)
            t += qf * xv
        if w < 4:
            sa += t
        else:
            sb += t
    return d * (sca * sa + scb * sb)


def _q6_k_py(x32, m_rows, k, raw32, rb, n_rows, out, out_f32, res, has_res):
    sm = cuda.shared.array((ROWS, _SM_WORDS), np.uint32)
    acc = cuda.local.array(MAX_M, np.float32)
    warp = cuda.threadIdx.x >> 5
    lane = cuda.threadIdx.x & 31
    row = cuda.blockIdx.x * ROWS + warp
    rowc = min(row, n_rows - 1)
    for i in range(MAX_M):
        acc[i] = np.float32(0.0)
    nsb = k >> 8
    nspan = (nsb + 3) >> 2
    sb = lane >> 3
    h = (lane & 7) >> 2
    j = lane & 3
    q0, q1, q2, off = span_load(raw32, rowc * rb, min(4, nsb) * 210, lane)
    for sp in range(nspan):
        b0 = sp * 4
        nb = min(4, nsb - b0)
        span_store(sm, warp, lane, q0, q1, q2)
        cur_off = off
        if sp + 1 < nspan:
            q0, q1, q2, off = span_load(raw32, rowc * rb + (b0 + 4) * 210, min(4, nsb - b0 - 4) * 210, lane)
        ptx.syncwarp()
        if sb < nb:
            for m in range(m_rows):
                acc[m] += _q6_k_lane(sm, warp, cur_off + 210 * sb, h, j, x32, m, k,
                                     (b0 + sb) * 256 + 128 * h + 32 * j)
        ptx.syncwarp()
    for m in range(m_rows):
        v = warp_sum(acc[m])
        if lane == 0 and row < n_rows:
            store_out(out, out_f32, res, has_res, m, n_rows, row, v)


# Register caps from ptxas -v: Q8_0 fits 64 without spills (4 blocks/SM instead of 3); Q4_K/Q6_K
# need ~119 registers (2 blocks/SM) and spill 8-128 bytes at 80 (3 blocks/SM). Both Q4_K/Q6_K
# builds exist so the benchmark can measure which is faster (``variant``).
_gemv_q8_0_kernel = jit(max_registers=64)(_q8_0_py)
_gemv_q4_k_kernel = jit(max_registers=80)(_q4_k_py)
_gemv_q6_k_kernel = jit(max_registers=80)(_q6_k_py)
_KERNELS = {"Q8_0": _gemv_q8_0_kernel, "Q4_K": _gemv_q4_k_kernel, "Q6_K": _gemv_q6_k_kernel}
_KERNELS_UNCAPPED = {"Q8_0": _gemv_q8_0_kernel, "Q4_K": jit(cache=False)(_q4_k_py),
                     "Q6_K": jit(cache=False)(_q6_k_py)}


def _check(x, raw32, qtype, n, out, residual):
    if qtype not in _KERNELS:
        raise KernelError(f"gemv_gguf: no kernel for GGUF type {qtype!r}; supported {list(SUPPORTED)}")
    if x.dtype != torch.bfloat16 or x.dim() != 2 or not x.is_contiguous() or not 1 <= x.shape[0] <= MAX_M:
        raise KernelError(f"gemv_gguf: x must be contiguous bf16 [M<= {MAX_M}, K], got {x.dtype} {list(x.shape)}")
    m, k = x.shape
    elems, nbytes = GGUF_BLOCKS[qtype]
    if k % elems:
        raise KernelError(f"gemv_gguf: {qtype} needs K % {elems} == 0, got K={k}")
    rb = k // elems * nbytes
    if raw32.dtype != torch.int32 or raw32.dim() != 1 or raw32.numel() * 4 < n * rb + 16:
        raise KernelError(f"gemv_gguf: weights must be gguf_device_buffer(raw) (int32, >= {n * rb + 16} bytes), "
                         f"got {raw32.dtype} of {raw32.numel() * raw32.element_size()} bytes")
    if tuple(out.shape) != (m, n) or out.dtype not in (torch.bfloat16, torch.float32) or not out.is_contiguous():
        raise KernelError(f"gemv_gguf: out must be contiguous bf16/fp32 [{m}, {n}], got {out.dtype} {list(out.shape)}")
    if residual is not None and (residual.shape != out.shape or residual.dtype != torch.bfloat16
                                 or not residual.is_contiguous()):
        raise KernelError(f"gemv_gguf: residual must be contiguous bf16 {list(out.shape)}")
    return rb


def gemv_gguf(x: torch.Tensor, raw32: torch.Tensor, qtype: str, n: int, out: torch.Tensor, *,
              residual: torch.Tensor | None = None, variant: str = "capped") -> None:
    """``out = x @ W^T (+ residual)`` for a GGUF ``qtype`` tensor of N rows x K (= x.shape[1])."""
    rb = _check(x, raw32, qtype, n, out, residual)
    require_aligned("gemv_gguf", x, raw32)
    m, k = x.shape
    res = residual if residual is not None else out
    kernels = _KERNELS if variant == "capped" else _KERNELS_UNCAPPED
    launch(kernels[qtype], -(-n // ROWS), 32 * ROWS, x.view(torch.int32).reshape(-1), m, k, raw32, rb, n,
           out.reshape(-1), int(out.dtype == torch.float32),
           res.reshape(-1).view(torch.int16) if res.dtype == torch.bfloat16 else res.reshape(-1),
           int(residual is not None))


# ----------------------------------------------------------------------- torch reference
def _f16(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.float16).float()


def gguf_dequant(raw_u8: torch.Tensor, qtype: str, n: int, k: int) -> torch.Tensor:
    """Native GGUF blocks [n rows] -> float32 [n, k] (ggml's block_q8_0 / block_q4_K / block_q6_K
    layouts, torch only)."""
    elems, nbytes = GGUF_BLOCKS[qtype]
    b = raw_u8.reshape(-1)[: n * (k // elems) * nbytes].reshape(n, k // elems, nbytes).long()
    if qtype == "Q8_0":
        d = _f16(b[..., 0:2].to(torch.uint8))
        q = b[..., 2:].to(torch.uint8).view(torch.int8).float()
        return (d * q).reshape(n, k)
    if qtype == "Q4_K":
        d, dmin = _f16(b[..., 0:2].to(torch.uint8)), _f16(b[..., 2:4].to(torch.uint8))
        s = b[..., 4:16]
        sc = torch.cat([s[..., 0:4] & 63, (s[..., 8:12] & 15) | ((s[..., 0:4] >> 6) << 4)], -1).float()
        mn = torch.cat([s[..., 4:8] & 63, (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)], -1).float()
        qs = b[..., 16:].reshape(n, -1, 4, 32)  # chunk c of 32 bytes
        q = torch.stack([qs & 15, qs >> 4], dim=3).reshape(n, -1, 8, 32).float()  # sub-block 2c+nib
        return (d.unsqueeze(-1) * sc.unsqueeze(-1) * q - dmin.unsqueeze(-1) * mn.unsqueeze(-1)).reshape(n, k)
    if qtype == "Q6_K":
        ql, qh = b[..., 0:128], b[..., 128:192]
        sc = b[..., 192:208].to(torch.uint8).view(torch.int8).float()
        d = _f16(b[..., 208:210].to(torch.uint8))
        out = torch.empty(n, k // 256, 256, device=raw_u8.device)
        for h in range(2):
            for j in range(4):
                lo = (ql[..., 64 * h + 32 * (j % 2): 64 * h + 32 * (j % 2) + 32] >> (4 * (j // 2))) & 15
                hi = (qh[..., 32 * h: 32 * h + 32] >> (2 * j)) & 3
                e0 = 128 * h + 32 * j
                out[..., e0:e0 + 32] = (lo | (hi << 4)).float() - 32
        out = out.reshape(n, k // 256, 16, 16) * sc.unsqueeze(-1) * d.reshape(n, -1, 1, 1)
        return out.reshape(n, k)
    raise KernelError(f"gguf_dequant: unsupported type {qtype!r}")


def gemv_gguf_ref(x, raw32, qtype, n, out, *, residual=None, variant=None) -> None:
    """Torch reference of ``gemv_gguf`` (same arguments)."""
    _check(x, raw32, qtype, n, out, residual)
    m, k = x.shape
    wf = gguf_dequant(raw32.view(torch.uint8), qtype, n, k)
    y = x.float() @ wf.t()
    if residual is not None:
        y = y + residual.float()
    out.copy_(y.to(out.dtype))


def warmup(device="cuda", variants=("capped",)) -> None:
    """Compile and load every GGUF kernel for bf16/fp32 out, +-residual."""
    from imp_kernels.gguf_common import gguf_device_buffer
    from imp_kernels.launch import warmup as _run

    x = torch.zeros(1, 256, dtype=torch.bfloat16, device=device)
    res = torch.zeros(1, 8, dtype=torch.bfloat16, device=device)
    calls = []
    for q in SUPPORTED:
        elems, nb = GGUF_BLOCKS[q]
        buf = gguf_device_buffer(torch.zeros(8 * 256 // elems * nb, dtype=torch.uint8, device=device))
        for dt in (torch.bfloat16, torch.float32):
            for r in (None, res):
                for v in variants:
                    calls.append((gemv_gguf, (x, buf, q, 8, torch.empty(1, 8, dtype=dt, device=device)),
                                  {"residual": r, "variant": v}))
    _run(*calls)
