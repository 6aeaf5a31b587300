"""RMSNorm over the last dim of bf16 rows, with an optional fused residual add.

``rmsnorm(x, weight, out, eps=..., mode=..., offset=..., residual=None)`` computes, per row,
``h = x`` (or ``h = bf16(x + residual)``, written back into ``residual``) and then
``out = norm(h)`` with the engine's RMSNorm math (``rms_norm_torch`` below is that math in torch):

* ``weight=None``: ``bf16(x̂)`` (weightless: Gemma's v_norm and router input);
* ``mode="fp32"``: ``bf16(x̂ · (w + offset))``, the product in fp32 (Gemma plain weight;
  Qwen's zero-centred norm with ``offset=1.0``);
* ``mode="llama"``: ``w' · bf16(x̂)`` rounded to bf16, ``w' = bf16(w + offset)`` (Mistral);

with ``x̂ = h_f32 · 1/sqrt(mean(h_f32²) + eps)`` in fp32. One block per row; each thread keeps
up to 4 chunks of 8 elements (16-byte loads and stores) in registers, so the row is read once.
Rows are any leading dims flattened (M tokens, or tokens x heads for per-head q/k norms).
``out`` may alias ``x`` (each thread reads its elements before writing them).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from imp_kernels import ptx
from imp_kernels.compat import cuda
from imp_kernels.launch import jit, launch
from imp_kernels.ops_common import bf16_round, block_sum, check, hi_f32, lo_f32, st_v4, u32, want

__all__ = ["rmsnorm", "rmsnorm_ref", "rms_norm_torch", "rmsnorm_threads", "MAX_N"]

CHUNKS = 4  # 16-byte chunks per thread
NVALS = 8 * CHUNKS
MAX_N = 1024 * 8 * CHUNKS
_MODES = {"fp32": 1, "llama": 2}


@jit
def _rmsnorm_kernel(x32, res32, has_res, w32, wmode, offset, eps, out32, n):
    scratch = cuda.shared.array(32, np.float32)
    tid = cuda.threadIdx.x
    nw = n >> 1
    base = cuda.blockIdx.x * nw
    vals = cuda.local.array(NVALS, np.float32)
    ss = np.float32(0.0)
    for c in range(CHUNKS):
        j = (c * cuda.blockDim.x + tid) * 4
        if j < nw:
            a = ptx.ld_v4(x32, base + j)
            if has_res:
                r = ptx.ld_v4(res32, base + j)
                hw = cuda.local.array(4, np.uint32)
                for e in range(4):
                    lo = bf16_round(lo_f32(a[e]) + lo_f32(r[e]))
                    hi = bf16_round(hi_f32(a[e]) + hi_f32(r[e]))
                    vals[c * 8 + 2 * e] = lo
                    vals[c * 8 + 2 * e + 1] = hi
                    hw[e] = np.uint32((ptx.f32_to_bits(lo) >> 16) | (ptx.f32_to_bits(hi) & 0xFFFF0000))
                st_v4(res32, base + j, hw[0], hw[1], hw[2], hw[3])
            else:
                for e in range(4):
                    vals[c * 8 + 2 * e] = lo_f32(a[e])
                    vals[c * 8 + 2 * e + 1] = hi_f32(a[e])
            for e in range(8):
                v = vals[c * 8 + e]
                ss += v * v
    total = block_sum(ss, scratch)
    inv = np.float32(1.0) / np.float32(math.sqrt(np.float32(total / np.float32(n)) + eps))
    for c in range(CHUNKS):
        j = (c * cuda.blockDim.x + tid) * 4
        if j < nw:
            ow = cuda.local.array(4, np.uint32)
            wv = ptx.ld_v4_cached(w32, j)  # x's row 0 when weightless (unused then)
            for e in range(4):
                lo = vals[c * 8 + 2 * e] * inv
                hi = vals[c * 8 + 2 * e + 1] * inv
                if wmode == 1:
                    lo = lo * (lo_f32(wv[e]) + offset)
                    hi = hi * (hi_f32(wv[e]) + offset)
                elif wmode == 2:
                    lo = bf16_round(lo) * bf16_round(lo_f32(wv[e]) + offset)
                    hi = bf16_round(hi) * bf16_round(hi_f32(wv[e]) + offset)
                ow[e] = np.uint32(ptx.cvt_bf16_f32(lo) | (ptx.cvt_bf16_f32(hi) << 16))
            st_v4(out32, base + j, ow[0], ow[1], ow[2], ow[3])


def rmsnorm_threads(n: int) -> int:
    """Threads per row: one 16-byte chunk each up to 256 threads, then up to 4 chunks each."""
    c32 = lambda v: -(-v // 32) * 32  # noqa: E731
    return min(1024, max(32, min(256, c32(-(-n // 8))), c32(-(-n // (8 * CHUNKS)))))


def _check(x, weight, out, mode, residual):
    k = "rmsnorm"
    check(x.dtype == torch.bfloat16 and x.is_contiguous() and x.dim() >= 1,
          f"{k}: x must be contiguous bf16 [..., N], got {x.dtype} {list(x.shape)}")
    n = x.shape[-1]
    check(n % 8 == 0 and 8 <= n <= MAX_N, f"{k}: N={n} must be a multiple of 8 in [8, {MAX_N}]")
    check(mode in _MODES, f"{k}: mode must be 'fp32' or 'llama', got {mode!r}")
    want(out, "out", k, torch.bfloat16, tuple(x.shape))
    if weight is not None:
        want(weight, "weight", k, torch.bfloat16, (n,))
    if residual is not None:
        want(residual, "residual", k, torch.bfloat16, tuple(x.shape))
    for t in (weight, out, residual):
        check(t is None or t.device == x.device, f"{k}: all tensors must be on {x.device}")


def rmsnorm(x: torch.Tensor, weight: torch.Tensor | None, out: torch.Tensor, *, eps: float,
            mode: str = "fp32", offset: float = 0.0, residual: torch.Tensor | None = None) -> None:
    """``out = norm(x)`` or, with ``residual``, ``residual = bf16(x + residual); out =
    norm(residual)`` (see module doc). bf16 [..., N] rows; no allocation, no host sync."""
    _check(x, weight, out, mode, residual)
    n = x.shape[-1]
    rows = x.numel() // n
    wmode = 0 if weight is None else _MODES[mode]
    x32 = u32(x)
    res32 = u32(residual) if residual is not None else x32
    w32 = u32(weight) if weight is not None else x32
    launch(_rmsnorm_kernel, rows, rmsnorm_threads(n), x32, res32, int(residual is not None), w32,
           wmode, np.float32(offset), np.float32(eps), u32(out), n)


def rms_norm_torch(x: torch.Tensor, weight: torch.Tensor | None, eps: float, *, mode: str = "fp32",
                   offset: float = 0.0) -> torch.Tensor:
    """RMSNorm over the last dim in torch, returning x's dtype (the module doc's three cases):
    ``x̂ = x_f32 · rsqrt(mean(x_f32²) + eps)``, then no weight, ``(x̂ · (w + offset))`` in fp32
    (``"fp32"``) or ``(w + offset) · x̂`` in x's dtype (``"llama"``)."""
    check(mode in _MODES, f"rms_norm_torch: mode must be 'fp32' or 'llama', got {mode!r}")
    xf = x.float()
    n = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is None:
        return n.to(x.dtype)
    if mode == "llama":
        w = weight if offset == 0.0 else weight + offset
        return w * n.to(x.dtype)
    w = weight.float()
    if offset:
        w = w + offset
    return (n * w).to(x.dtype)


def rmsnorm_ref(x: torch.Tensor, weight: torch.Tensor | None, out: torch.Tensor, *, eps: float,
                mode: str = "fp32", offset: float = 0.0, residual: torch.Tensor | None = None) -> None:
    """Torch reference of ``rmsnorm`` (same arguments): the add in bf16, then ``rms_norm_torch``."""
    _check(x, weight, out, mode, residual)
    h = x
    if residual is not None:
        h = x + residual
        residual.copy_(h)
    out.copy_(rms_norm_torch(h, weight, eps, mode=mode, offset=offset))


def kernel_sigs(T) -> dict:
    """Argument types of the kernel as the wrapper launches it (for imp_kernels.bench.ptx_report)."""
    return {"rmsnorm": (_rmsnorm_kernel, (T.U32, T.U32, T.I, T.U32, T.I, T.F, T.F, T.U32, T.I))}
