"""RMSNorm over the last dim of bf16 rows, with an optional fused residual add before the norm
and an optional add (and multiply) after it.

``rmsnorm(x, weight, out, eps=..., mode=..., offset=..., residual=None, add=None, scale=None,
weight2=None, out2=None)`` computes, per row, ``h = x`` (or ``h = bf16(x + residual)``, written
back into ``residual``), then ``n = norm(h)`` with the engine's RMSNorm math (``rms_norm_torch``
below is that math in torch):

* ``weight=None``: ``bf16(x̂)`` (weightless: Gemma's v_norm and router input);
* ``mode="fp32"``: ``bf16(x̂ · (w + offset))``, the product in fp32 (Gemma plain weight;
  Qwen's zero-centred norm with ``offset=1.0``);
* ``mode="llama"``: ``w' · bf16(x̂)`` rounded to bf16, ``w' = bf16(w + offset)`` (Mistral);

with ``x̂ = h_f32 · 1/sqrt(mean(h_f32²) + eps)`` in fp32, and ``out = n``. The post-norm
epilogue (Gemma's sandwich norms) is the torch ops it replaces, each rounded once to bf16:
``out = bf16(add + n)`` with ``add``, then ``out = bf16(out · scale)`` with ``scale`` (one bf16
element on the device, read there: Gemma's ``layer_scalar``). ``weight2`` adds a second output
from the same ``h``: ``out2 = norm(h)`` with ``weight2`` (same mode and offset, no epilogue).

One block per row; each thread keeps up to 4 chunks of 8 elements (16-byte loads and stores) in
registers, so the row is read once, and issues all its loads (x, residual, weights, add) before the
block's reduction: one wait for memory per launch, not one per operand. Rows are any leading dims flattened (M tokens, or tokens x
heads for per-head q/k norms). ``out`` may alias ``x`` and ``add`` (each thread reads its
elements before writing them); ``add`` and ``residual`` do not combine.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from imp_kernels import ptx
from imp_kernels.compat import cuda
from imp_kernels.launch import device_jit, jit, launch
from imp_kernels.ops_common import (bf16_round, block_sum, check, hi_f32, ld_bf16, lo_f32, pack_bf16, st_v4, u32,
                                    want)

__all__ = ["rmsnorm", "rmsnorm_ref", "rms_norm_torch", "rmsnorm_threads", "MAX_N"]

CHUNKS = 4  # 16-byte chunks per thread (the kernel is written out for four)
NVALS = 8 * CHUNKS
MAX_N = 1024 * 8 * CHUNKS
_MODES = {"fp32": 1, "llama": 2}


@device_jit(inline="always")
def _normed(v, inv, w, wmode, offset):
    """One element of ``norm(h)`` before its bf16 rounding (``w`` unused when weightless)."""
    y = v * inv
    if wmode == 1:
        y = y * (w + offset)
    elif wmode == 2:
        y = bf16_round(y) * bf16_round(w + offset)
    return y


@device_jit(inline="always")
def _load(x32, res32, has_res, w32, w2_32, has_w2, add32, has_add, base, j, ok):
    """A thread's chunk (8 elements) of every operand: x, residual, weight, weight2, add (zeros or
    aliases where absent). Values in registers (tuples), all loads issued before any is used."""
    z = np.uint32(0)
    a = (z, z, z, z)
    w, r, w2, av = a, a, a, a
    if ok:
        a = ptx.ld_v4(x32, base + j)
        w = ptx.ld_v4_cached(w32, j)  # x's row 0 when weightless (unused then)
        if has_res:
            r = ptx.ld_v4(res32, base + j)
        if has_w2:
            w2 = ptx.ld_v4_cached(w2_32, j)
        if has_add:
            av = ptx.ld_v4(add32, base + j)
    return a, r, w, w2, av


@device_jit(inline="always")
def _h_word(a, r, has_res):
    """bf16 pair of h = x (or bf16(x + residual))."""
    if has_res:
        return pack_bf16(lo_f32(a) + lo_f32(r), hi_f32(a) + hi_f32(r))
    return a


@device_jit(inline="always")
def _sumsq(ss, d, has_res, res32, base, j, ok):
    """(ss + Σ h² over the chunk in element order, h words); h goes back to ``residual``."""
    a, r = d[0], d[1]
    h0 = _h_word(a[0], r[0], has_res)
    h1 = _h_word(a[1], r[1], has_res)
    h2 = _h_word(a[2], r[2], has_res)
    h3 = _h_word(a[3], r[3], has_res)
    if ok:
        if has_res:
            st_v4(res32, base + j, h0, h1, h2, h3)
        for hw in (h0, h1, h2, h3):
            lo = lo_f32(hw)
            hi = hi_f32(hw)
            ss += lo * lo
            ss += hi * hi
    return ss, (h0, h1, h2, h3)


@device_jit(inline="always")
def _out_word(hw, ww, aw, inv, wmode, offset, has_add, s):
    o = pack_bf16(_normed(lo_f32(hw), inv, lo_f32(ww), wmode, offset),
                  _normed(hi_f32(hw), inv, hi_f32(ww), wmode, offset))
    if has_add:
        o = pack_bf16(bf16_round(lo_f32(o) + lo_f32(aw)) * s, bf16_round(hi_f32(o) + hi_f32(aw)) * s)
    return o


@device_jit(inline="always")
def _emit(h, d, inv, wmode, offset, has_add, s, has_w2, out32, out2_32, base, j, ok):
    """Store the chunk's outputs: out (with the post-norm add and scale) and out2."""
    if ok:
        w, w2, av = d[2], d[3], d[4]
        st_v4(out32, base + j, _out_word(h[0], w[0], av[0], inv, wmode, offset, has_add, s),
              _out_word(h[1], w[1], av[1], inv, wmode, offset, has_add, s),
              _out_word(h[2], w[2], av[2], inv, wmode, offset, has_add, s),
              _out_word(h[3], w[3], av[3], inv, wmode, offset, has_add, s))
        if has_w2:
            st_v4(out2_32, base + j, _out_word(h[0], w2[0], av[0], inv, wmode, offset, False, s),
                  _out_word(h[1], w2[1], av[1], inv, wmode, offset, False, s),
                  _out_word(h[2], w2[2], av[2], inv, wmode, offset, False, s),
                  _out_word(h[3], w2[3], av[3], inv, wmode, offset, False, s))


@jit
def _rmsnorm_kernel(x32, res32, has_res, w32, wmode, offset, eps, out32, n, add32, has_add, scale16, has_scale,
                    w2_32, out2_32, has_w2):
    scratch = cuda.shared.array(32, np.float32)
    tid = cuda.threadIdx.x
    bd = cuda.blockDim.x
    nw = n >> 1
    base = cuda.blockIdx.x * nw
    # the CHUNKS (4) chunks of a thread, written out so everything stays in registers
    j0 = tid * 4
    j1 = (bd + tid) * 4
    j2 = (2 * bd + tid) * 4
    j3 = (3 * bd + tid) * 4
    d0 = _load(x32, res32, has_res, w32, w2_32, has_w2, add32, has_add, base, j0, j0 < nw)
    d1 = _load(x32, res32, has_res, w32, w2_32, has_w2, add32, has_add, base, j1, j1 < nw)
    d2 = _load(x32, res32, has_res, w32, w2_32, has_w2, add32, has_add, base, j2, j2 < nw)
    d3 = _load(x32, res32, has_res, w32, w2_32, has_w2, add32, has_add, base, j3, j3 < nw)
    ss, h0 = _sumsq(np.float32(0.0), d0, has_res, res32, base, j0, j0 < nw)
    ss, h1 = _sumsq(ss, d1, has_res, res32, base, j1, j1 < nw)
    ss, h2 = _sumsq(ss, d2, has_res, res32, base, j2, j2 < nw)
    ss, h3 = _sumsq(ss, d3, has_res, res32, base, j3, j3 < nw)
    total = block_sum(ss, scratch)
    inv = np.float32(1.0) / np.float32(math.sqrt(np.float32(total / np.float32(n)) + eps))
    s = np.float32(1.0)  # times 1 is exact: no branch on has_scale in the loop
    if has_scale:
        s = ld_bf16(scale16, 0)
    _emit(h0, d0, inv, wmode, offset, has_add, s, has_w2, out32, out2_32, base, j0, j0 < nw)
    _emit(h1, d1, inv, wmode, offset, has_add, s, has_w2, out32, out2_32, base, j1, j1 < nw)
    _emit(h2, d2, inv, wmode, offset, has_add, s, has_w2, out32, out2_32, base, j2, j2 < nw)
    _emit(h3, d3, inv, wmode, offset, has_add, s, has_w2, out32, out2_32, base, j3, j3 < nw)


def rmsnorm_threads(n: int) -> int:
    """Threads per row: one 16-byte chunk each up to 256 threads, then up to 4 chunks each."""
    c32 = lambda v: -(-v // 32) * 32  # noqa: E731
    return min(1024, max(32, min(256, c32(-(-n // 8))), c32(-(-n // (8 * CHUNKS)))))


def _check(x, weight, out, mode, residual, add, scale, weight2, out2):
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
    if add is not None:
        want(add, "add", k, torch.bfloat16, tuple(x.shape))
        # add is read through the non-coherent cache: never after the kernel wrote it as residual
        check(residual is None, f"{k}: add and residual do not combine")
    if scale is not None:
        want(scale, "scale", k, torch.bfloat16, (1,))
        check(add is not None, f"{k}: scale needs add")
    check((weight2 is None) == (out2 is None), f"{k}: weight2 and out2 come together")
    if weight2 is not None:
        check(weight is not None, f"{k}: weight2 needs weight")
        want(weight2, "weight2", k, torch.bfloat16, (n,))
        want(out2, "out2", k, torch.bfloat16, tuple(x.shape))
    for t in (weight, out, residual, add, scale, weight2, out2):
        check(t is None or t.device == x.device, f"{k}: all tensors must be on {x.device}")


def rmsnorm(x: torch.Tensor, weight: torch.Tensor | None, out: torch.Tensor, *, eps: float,
            mode: str = "fp32", offset: float = 0.0, residual: torch.Tensor | None = None,
            add: torch.Tensor | None = None, scale: torch.Tensor | None = None,
            weight2: torch.Tensor | None = None, out2: torch.Tensor | None = None) -> None:
    """``out = norm(x)`` or, with ``residual``, ``residual = bf16(x + residual); out =
    norm(residual)``; then ``out = bf16(add + out)`` and ``out = bf16(out · scale)`` with ``add``
    and ``scale``; ``out2`` = the same norm with ``weight2`` (see module doc). bf16 [..., N] rows;
    no allocation, no host sync."""
    _check(x, weight, out, mode, residual, add, scale, weight2, out2)
    n = x.shape[-1]
    rows = x.numel() // n
    wmode = 0 if weight is None else _MODES[mode]
    x32 = u32(x)
    res32 = u32(residual) if residual is not None else x32
    w32 = u32(weight) if weight is not None else x32
    add32 = u32(add) if add is not None else x32
    scale16 = (scale if scale is not None else x).view(torch.uint16).reshape(-1)
    w2_32 = u32(weight2) if weight2 is not None else x32
    out2_32 = u32(out2) if out2 is not None else x32
    launch(_rmsnorm_kernel, rows, rmsnorm_threads(n), x32, res32, int(residual is not None), w32,
           wmode, np.float32(offset), np.float32(eps), u32(out), n, add32, int(add is not None), scale16,
           int(scale is not None), w2_32, out2_32, int(weight2 is not None))


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
                mode: str = "fp32", offset: float = 0.0, residual: torch.Tensor | None = None,
                add: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                weight2: torch.Tensor | None = None, out2: torch.Tensor | None = None) -> None:
    """Torch reference of ``rmsnorm`` (same arguments): the add in bf16, ``rms_norm_torch``, then
    the bf16 add and multiply of the epilogue."""
    _check(x, weight, out, mode, residual, add, scale, weight2, out2)
    h = x
    if residual is not None:
        h = x + residual
        residual.copy_(h)
    o = rms_norm_torch(h, weight, eps, mode=mode, offset=offset)
    if weight2 is not None:
        o2 = rms_norm_torch(h, weight2, eps, mode=mode, offset=offset)
    if add is not None:
        o = add + o
    if scale is not None:
        o = o * scale
    out.copy_(o)
    if weight2 is not None:
        out2.copy_(o2)


def kernel_sigs(T) -> dict:
    """Argument types of the kernel as the wrapper launches it (for imp_kernels.bench.ptx_report)."""
    return {"rmsnorm": (_rmsnorm_kernel, (T.U32, T.U32, T.I, T.U32, T.I, T.F, T.F, T.U32, T.I, T.U32, T.I, T.U16,
                                          T.I, T.U32, T.U32, T.I))}
