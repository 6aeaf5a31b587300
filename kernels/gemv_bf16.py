"""BF16 GEMV (routers, bf16 lm_heads, DeltaNet a/b projections): ``out = x @ W^T (+ residual)``.

``gemv_bf16`` reads W [N, K] bf16 in its native row-major layout (no repack): one block takes two
16-row tiles, warps split 32-column chunks, lane t of a row owns 8 consecutive columns (one
16-byte load per row), and ``mma.sync m16n8k16`` bf16 x bf16 -> fp32 does the products, so the
activations need no conversion. ``linear_bf16`` picks, per shape class, this kernel or
``torch.mm``/``torch.addmm`` (cuBLAS) -- whichever the H200 benchmark measured faster
(``NUMBA_WINS``; today cuBLAS wins or ties every measured class, see bench/results).
M = 1..8 rows of x, K % 8 == 0.
"""

from __future__ import annotations

import numpy as np
from numba import types as nbt
import torch

from imp_kernels import ptx
from imp_kernels.compat import cuda
from imp_kernels.errors import KernelError
from imp_kernels.launch import device_jit, jit, launch, require_aligned
from imp_kernels.mma_frag import stash_frags, store_out, warp_sum

__all__ = ["warmup", "gemv_bf16", "gemv_bf16_ref", "linear_bf16", "NUMBA_WINS"]

MAX_WARPS = 16
MAX_M = 8


@device_jit(inline="always")
def _load_bf16_chunk(x32, m_rows, k, w32, n_rows, hk, g, t, row0, kc):
    """x words and the 4 weight rows (row0, +8, +16, +24) of one 32-column chunk for this lane."""
    zw = np.uint32(0)
    xq, r0, r1, r2, r3 = (zw, zw, zw, zw), (zw, zw, zw, zw), (zw, zw, zw, zw), (zw, zw, zw, zw), (zw, zw, zw, zw)
    col = kc * 32 + 8 * t
    if col < k:
        if g < m_rows:
            xq = ptx.ld_v4_cached(x32, (g * k + col) >> 1)
        if row0 < n_rows:
            r0 = ptx.ld_v4(w32, row0 * hk + (col >> 1))
        if row0 + 8 < n_rows:
            r1 = ptx.ld_v4(w32, (row0 + 8) * hk + (col >> 1))
        if row0 + 16 < n_rows:
            r2 = ptx.ld_v4(w32, (row0 + 16) * hk + (col >> 1))
        if row0 + 24 < n_rows:
            r3 = ptx.ld_v4(w32, (row0 + 24) * hk + (col >> 1))
    return xq, r0, r1, r2, r3


@jit
def _gemv_bf16_kernel(x32, m_rows, k, w32, n_rows, out, out_f32, res, has_res):
    red = cuda.shared.array(0, nbt.float32)  # [warps, 32 rows, 8 cols], sized at launch
    tid = cuda.threadIdx.x
    lane = tid & 31
    warp = tid >> 5
    nwarps = cuda.blockDim.x >> 5
    g = lane >> 2
    t = lane & 3
    row0 = cuda.blockIdx.x * 32 + g
    kc_total = (k + 31) >> 5
    hk = k >> 1  # words per row
    z = np.float32(0.0)
    a0, a1, a2, a3, b0, b1, b2, b3 = z, z, z, z, z, z, z, z
    kc = warp  # software pipeline two chunks deep
    xq, r0, r1, r2, r3 = _load_bf16_chunk(x32, m_rows, k, w32, n_rows, hk, g, t, row0, kc)
    px, p0, p1, p2, p3 = _load_bf16_chunk(x32, m_rows, k, w32, n_rows, hk, g, t, row0, kc + nwarps)
    while kc < kc_total:
        kn = kc + nwarps
        nx, n0, n1, n2, n3 = _load_bf16_chunk(x32, m_rows, k, w32, n_rows, hk, g, t, row0, kn + nwarps)
        for s in range(2):
            a0, a1, a2, a3 = ptx.mma_bf16(r0[2 * s], r1[2 * s], r0[2 * s + 1], r1[2 * s + 1],
                                          xq[2 * s], xq[2 * s + 1], a0, a1, a2, a3)
            b0, b1, b2, b3 = ptx.mma_bf16(r2[2 * s], r3[2 * s], r2[2 * s + 1], r3[2 * s + 1],
                                          xq[2 * s], xq[2 * s + 1], b0, b1, b2, b3)
        xq, r0, r1, r2, r3 = px, p0, p1, p2, p3
        px, p0, p1, p2, p3 = nx, n0, n1, n2, n3
        kc = kn
    stash_frags(red, warp, g, t, a0, a1, a2, a3, b0, b1, b2, b3)
    cuda.syncthreads()
    for idx in range(tid, 256, cuda.blockDim.x):
        r = idx >> 3
        m = idx & 7
        row = cuda.blockIdx.x * 32 + r
        if m < m_rows and row < n_rows:
            store_out(out, out_f32, res, has_res, m, n_rows, row, warp_sum(red, idx, nwarps))


def _block_warps(blocks: int, chunks: int) -> int:
    want = max(1, -(-132 * 24 // max(1, blocks)))
    w = 1
    while w < want and w < MAX_WARPS:
        w *= 2
    return max(1, min(w, chunks, MAX_WARPS))


def _check(x, w, out, residual):
    if x.dtype != torch.bfloat16 or w.dtype != torch.bfloat16 or x.dim() != 2 or w.dim() != 2:
        raise KernelError(f"gemv_bf16: x [M, K] and w [N, K] must be bf16, got {x.dtype} {list(x.shape)}, "
                         f"{w.dtype} {list(w.shape)}")
    m, k = x.shape
    n = w.shape[0]
    if w.shape[1] != k or k % 8 or not 1 <= m <= MAX_M:
        raise KernelError(f"gemv_bf16: need w [N, {k}], K % 8 == 0 and 1 <= M <= {MAX_M}; got x {list(x.shape)}, "
                         f"w {list(w.shape)}")
    if not (x.is_contiguous() and w.is_contiguous() and out.is_contiguous()):
        raise KernelError("gemv_bf16: x, w and out must be contiguous")
    if tuple(out.shape) != (m, n) or out.dtype not in (torch.bfloat16, torch.float32):
        raise KernelError(f"gemv_bf16: out must be bf16/fp32 [{m}, {n}], got {out.dtype} {list(out.shape)}")
    if residual is not None and (residual.shape != out.shape or residual.dtype != torch.bfloat16
                                 or not residual.is_contiguous()):
        raise KernelError(f"gemv_bf16: residual must be contiguous bf16 {list(out.shape)}")


def gemv_bf16(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, *,
              residual: torch.Tensor | None = None, warps: int | None = None) -> None:
    """Numba tensor-core GEMV ``out = x @ w^T (+ residual)``; no allocation, no sync."""
    _check(x, w, out, residual)
    require_aligned("gemv_bf16", x, w)
    m, k = x.shape
    n = w.shape[0]
    blocks = -(-n // 32)
    nw = warps or _block_warps(blocks, -(-k // 32))
    res = residual if residual is not None else out
    launch(_gemv_bf16_kernel, blocks, 32 * nw, x.view(torch.int32).reshape(-1), m, k,
           w.view(torch.int32).reshape(-1), n, out.reshape(-1), int(out.dtype == torch.float32),
           res.reshape(-1).view(torch.int16) if res.dtype == torch.bfloat16 else res.reshape(-1),
           int(residual is not None), shared_bytes=nw * 256 * 4)


def gemv_bf16_ref(x, w, out, *, residual=None, warps=None) -> None:
    """Torch reference (same arguments): fp32 matmul of the bf16 values, one rounding."""
    _check(x, w, out, residual)
    y = x.float() @ w.float().t()
    if residual is not None:
        y = y + residual.float()
    out.copy_(y.to(out.dtype))


def _torch_linear(x, w, out, residual):
    if residual is None:
        torch.mm(x, w.t(), out=out)
    else:
        torch.addmm(residual, x, w.t(), out=out)


# Shape classes where gemv_bf16 measured faster than cuBLAS (torch.mm) on the H200, CUDA-graph
# replay, bench/results/2026-11-28-h200-gemv.md. Measured (us, ours vs torch, M=1): router 256x2048
# 5.8 vs 5.8, DeltaNet a/b 32x2048 5.1 vs 5.0, Gemma router 128x2816 7.2 vs 6.9, shared gate 1x2048
# 4.0 vs 4.0, in_proj_z 4096x2048 8.0 vs 7.8, o 5120x4096 20.5 vs 13.6 (M=8: 21.1 vs 13.5),
# lm_head 248320x2048 388 vs 236, 262144x2816 593 vs 336. cuBLAS wins or ties every class, so
# linear_bf16 routes everything to it; a class goes here only when a benchmark shows a win.
NUMBA_WINS: set[tuple[str, str, str]] = set()


def _shape_class(m: int, n: int, k: int) -> tuple[str, str, str]:
    mb = "m1" if m == 1 else ("m2-4" if m <= 4 else "m5-8")
    nb = "n<=1k" if n <= 1024 else ("n<=16k" if n <= 16384 else "n>16k")
    kb = "k<=2k" if k <= 2048 else ("k<=8k" if k <= 8192 else "k>8k")
    return mb, nb, kb


def linear_bf16(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, *,
                residual: torch.Tensor | None = None) -> None:
    """``out = x @ w^T (+ residual)`` by whichever of gemv_bf16 / cuBLAS wins for this shape class."""
    m, k = x.shape
    n = w.shape[0]
    if m > MAX_M or k % 8 or out.dtype != torch.bfloat16 or _shape_class(m, n, k) not in NUMBA_WINS:
        if out.dtype == torch.bfloat16:
            _torch_linear(x, w, out, residual)
        else:
            y = x.float() @ w.float().t()
            out.copy_(y + residual.float() if residual is not None else y)
        return
    gemv_bf16(x, w, out, residual=residual)


def warmup(device="cuda") -> None:
    """Compile and load the specialisations real calls use (bf16/fp32 out, +-residual)."""
    from imp_kernels.launch import warmup as _run

    x = torch.zeros(1, 32, dtype=torch.bfloat16, device=device)
    w = torch.zeros(32, 32, dtype=torch.bfloat16, device=device)
    res = torch.zeros(1, 32, dtype=torch.bfloat16, device=device)
    _run(*[(gemv_bf16, (x, w, torch.empty(1, 32, dtype=dt, device=device)), {"residual": r})
           for dt in (torch.bfloat16, torch.float32) for r in (None, res)])
