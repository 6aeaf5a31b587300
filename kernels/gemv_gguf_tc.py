"""GGUF GEMV on tensor cores: ``out = x @ W^T (+ residual)`` for Q4_K, Q6_K and Q8_0 weights
re-tiled by ``repack_gguf.tc_tile`` (M = 1..8 rows of bf16 x).

The native-block kernels of ``gemv_gguf`` decode every element with fp32 CUDA-core arithmetic
and reach 7-13% of an H200's bandwidth. Here each lane turns its codes into f16 A fragments
with two or three f16x2 instructions per pair and feeds ``mma.sync m16n8k16`` (fp32
accumulate), the structure of ``gemv_nvfp4``: a block computes two 16-row tiles, its warps
split the chunks, two chunks of loads stay in flight while one computes, the warps' partial
sums meet in shared memory.

Decoding, per f16x2 pair (``repack_gguf`` layouts):
  q4: ``(w >> 4v) & 0x000F000F | 0x6400_6400`` is the pair 1024 + q (exact), minus 1024 gives
      q, then ``fma(q, s, -m)`` rounds the weight once to f16;
  q8: ``prmt`` puts bytes under 0x64 (1024 + byte), minus 1152 gives the signed code exactly,
      times s rounds the weight once to f16.
The scales of a lane's two rows come from its own word and its neighbour's (one shuffle per
chunk and tile); they are stored times 2^P (``repack_gguf``), which the epilogue takes back with
``unscale`` = 2^-P in fp32 (exact). The result is the GGUF dequantisation with each weight
rounded to f16 (11 bits; the reference path rounds it to bf16, 8 bits) and fp32 sums.
"""

from __future__ import annotations

import numpy as np
from numba import types as nbt
import torch

from imp_kernels import ptx
from imp_kernels.compat import cuda
from imp_kernels.errors import KernelError
from imp_kernels.gemv_nvfp4 import nvfp4_block_warps
from imp_kernels.launch import compiled_regs, device_jit, jit, launch, require_aligned
from imp_kernels.mma_frag import (bf16x2_to_f16x2, finish_tiles, launch_splits, load_x8_bf16, load_x16_raw,
                                  split_range, stash_frags, x16_to_f16)
from imp_kernels.repack_gguf import tc_tile, tc_untile_dequant

__all__ = ["warmup", "gemv_gguf_tc", "gemv_gguf_tc_ref", "KINDS"]

KINDS = ("q4", "q8")
MAX_M = 8
_MAGIC4 = np.uint32(0x64006400)  # f16x2 (1024, 1024)
_HI64 = np.uint32(0x64646464)
_BIAS8 = np.uint32(0x64806480)  # f16x2 (1152, 1152) = 1024 + the code's +128


@device_jit(inline="always")
def _pair_words(own, t):
    """(row g word, row g+8 word) of a lane from its own scale word and its neighbour's."""
    other = ptx.f32_to_bits(ptx.shfl_xor_f32(ptx.bits_to_f32(own), 1))
    if t & 1:
        return other, own
    return own, other


# ------------------------------------------------------------------------------------- q4
@device_jit(inline="always")
def _q4_frag(w, sh, s2, m2):
    v = ((w >> sh) & np.uint32(0x000F000F)) | _MAGIC4
    return ptx.hfma2(ptx.hsub2(np.uint32(v), _MAGIC4), s2, m2)


@device_jit(inline="always")
def _q4_load(codes, scales, kc_total, kc_end, tile0, lane, x32, m_rows, k, g, t, kc):
    zw = np.uint32(0)
    zq = (zw, zw, zw, zw)
    wa, wb, xa, xb = zq, zq, zq, zq
    sa, sb = zw, zw
    if kc < kc_end:
        i0 = (tile0 * kc_total + kc) * 32 + lane
        wa = ptx.ld_v4(codes, i0 * 4)
        wb = ptx.ld_v4(codes, (i0 + kc_total * 32) * 4)
        sa = np.uint32(int(scales[i0]) & 0xFFFFFFFF)
        sb = np.uint32(int(scales[i0 + kc_total * 32]) & 0xFFFFFFFF)
        xa, xb = load_x16_raw(x32, m_rows, k, g, kc * 64 + 16 * t)
    return wa, wb, sa, sb, xa, xb


@device_jit(inline="always")
def _q4_tile(acc0, acc1, acc2, acc3, w4, sw, t, xf):
    wg, wg8 = _pair_words(sw, t)
    s_g, m_g = ptx.prmt(wg, 0, 0x1010), ptx.prmt(wg, 0, 0x3232)
    s_g8, m_g8 = ptx.prmt(wg8, 0, 0x1010), ptx.prmt(wg8, 0, 0x3232)
    for s in range(4):
        w = w4[s]
        acc0, acc1, acc2, acc3 = ptx.mma_f16(_q4_frag(w, 0, s_g, m_g), _q4_frag(w, 4, s_g8, m_g8),
                                             _q4_frag(w, 8, s_g, m_g), _q4_frag(w, 12, s_g8, m_g8),
                                             xf[2 * s], xf[2 * s + 1], acc0, acc1, acc2, acc3)
    return acc0, acc1, acc2, acc3


@jit(max_registers=80)
def _gemv_q4_kernel(x32, m_rows, k, codes, scales, kc_total, unscale, out, n_cols, out_f32, res, has_res,
                    ws, tickets, splits):
    red = cuda.shared.array(0, nbt.float32)  # [warps, 32 rows, 8 cols], sized at launch
    flag = cuda.shared.array(1, np.int32)
    tid = cuda.threadIdx.x
    lane = tid & 31
    warp = tid >> 5
    nwarps = cuda.blockDim.x >> 5
    g = lane >> 2
    t = lane & 3
    tile0 = cuda.blockIdx.x * 2
    z = np.float32(0.0)
    a0, a1, a2, a3, b0, b1, b2, b3 = z, z, z, z, z, z, z, z
    kc0, kc1 = split_range(kc_total, splits)
    kc = kc0 + warp
    wa, wb, sa, sb, xa, xb = _q4_load(codes, scales, kc_total, kc1, tile0, lane, x32, m_rows, k, g, t, kc)
    pa, pb, psa, psb, pxa, pxb = _q4_load(codes, scales, kc_total, kc1, tile0, lane, x32, m_rows, k, g, t,
                                          kc + nwarps)
    while kc < kc1:
        na, nb, nsa, nsb, nxa, nxb = _q4_load(codes, scales, kc_total, kc1, tile0, lane, x32, m_rows, k, g, t,
                                              kc + 2 * nwarps)
        xf = x16_to_f16(xa, xb)
        a0, a1, a2, a3 = _q4_tile(a0, a1, a2, a3, wa, sa, t, xf)
        b0, b1, b2, b3 = _q4_tile(b0, b1, b2, b3, wb, sb, t, xf)
        wa, wb, sa, sb, xa, xb = pa, pb, psa, psb, pxa, pxb
        pa, pb, psa, psb, pxa, pxb = na, nb, nsa, nsb, nxa, nxb
        kc += nwarps
    stash_frags(red, warp, g, t, a0, a1, a2, a3, b0, b1, b2, b3)
    cuda.syncthreads()
    finish_tiles(red, nwarps, tile0, m_rows, n_cols, unscale, ws, 0, out, out_f32, res, has_res, ws, tickets, splits,
                 flag)


# ------------------------------------------------------------------------------------- q8
@device_jit(inline="always")
def _q8_frag(w, sel, s2):
    return ptx.hmul2(ptx.hsub2(ptx.prmt(w, _HI64, sel), _BIAS8), s2)


@device_jit(inline="always")
def _q8_load(codes, scales, kc_total, kc_end, tile0, lane, x32, m_rows, k, g, t, kc):
    zw = np.uint32(0)
    zq = (zw, zw, zw, zw)
    wa, wb, xq = zq, zq, zq
    sa, sb = zw, zw
    if kc < kc_end:
        i0 = (tile0 * kc_total + kc) * 32 + lane
        wa = ptx.ld_v4(codes, i0 * 4)
        wb = ptx.ld_v4(codes, (i0 + kc_total * 32) * 4)
        sa = np.uint32(ptx.ld_u16(scales, i0))
        sb = np.uint32(ptx.ld_u16(scales, i0 + kc_total * 32))
        xq = load_x8_bf16(x32, m_rows, k, g, kc * 32 + 8 * t)
    return wa, wb, sa, sb, xq


@device_jit(inline="always")
def _q8_tile(acc0, acc1, acc2, acc3, w4, sw, t, x0, x1, x2, x3):
    # the f16 scale rides in the high half for the shuffle (a normal f16 there is a normal f32)
    wg, wg8 = _pair_words(np.uint32(sw << 16), t)
    s_g = ptx.prmt(wg, 0, 0x3232)
    s_g8 = ptx.prmt(wg8, 0, 0x3232)
    acc0, acc1, acc2, acc3 = ptx.mma_f16(_q8_frag(w4[0], 0x4140, s_g), _q8_frag(w4[1], 0x4140, s_g8),
                                         _q8_frag(w4[0], 0x4342, s_g), _q8_frag(w4[1], 0x4342, s_g8),
                                         x0, x1, acc0, acc1, acc2, acc3)
    acc0, acc1, acc2, acc3 = ptx.mma_f16(_q8_frag(w4[2], 0x4140, s_g), _q8_frag(w4[3], 0x4140, s_g8),
                                         _q8_frag(w4[2], 0x4342, s_g), _q8_frag(w4[3], 0x4342, s_g8),
                                         x2, x3, acc0, acc1, acc2, acc3)
    return acc0, acc1, acc2, acc3


@jit(max_registers=64)
def _gemv_q8_kernel(x32, m_rows, k, codes, scales, kc_total, unscale, out, n_cols, out_f32, res, has_res,
                    ws, tickets, splits):
    red = cuda.shared.array(0, nbt.float32)
    flag = cuda.shared.array(1, np.int32)
    tid = cuda.threadIdx.x
    lane = tid & 31
    warp = tid >> 5
    nwarps = cuda.blockDim.x >> 5
    g = lane >> 2
    t = lane & 3
    tile0 = cuda.blockIdx.x * 2
    z = np.float32(0.0)
    a0, a1, a2, a3, b0, b1, b2, b3 = z, z, z, z, z, z, z, z
    kc0, kc1 = split_range(kc_total, splits)
    kc = kc0 + warp
    wa, wb, sa, sb, xq = _q8_load(codes, scales, kc_total, kc1, tile0, lane, x32, m_rows, k, g, t, kc)
    pa, pb, psa, psb, px = _q8_load(codes, scales, kc_total, kc1, tile0, lane, x32, m_rows, k, g, t, kc + nwarps)
    while kc < kc1:
        na, nb, nsa, nsb, nx = _q8_load(codes, scales, kc_total, kc1, tile0, lane, x32, m_rows, k, g, t,
                                        kc + 2 * nwarps)
        x0 = bf16x2_to_f16x2(xq[0])
        x1 = bf16x2_to_f16x2(xq[1])
        x2 = bf16x2_to_f16x2(xq[2])
        x3 = bf16x2_to_f16x2(xq[3])
        a0, a1, a2, a3 = _q8_tile(a0, a1, a2, a3, wa, sa, t, x0, x1, x2, x3)
        b0, b1, b2, b3 = _q8_tile(b0, b1, b2, b3, wb, sb, t, x0, x1, x2, x3)
        wa, wb, sa, sb, xq = pa, pb, psa, psb, px
        pa, pb, psa, psb, px = na, nb, nsa, nsb, nx
        kc += nwarps
    stash_frags(red, warp, g, t, a0, a1, a2, a3, b0, b1, b2, b3)
    cuda.syncthreads()
    finish_tiles(red, nwarps, tile0, m_rows, n_cols, unscale, ws, 0, out, out_f32, res, has_res, ws, tickets, splits,
                 flag)


# --------------------------------------------------------------------------------- host side


def _check(x, kind, codes, scales, out, residual):
    if kind not in KINDS:
        raise KernelError(f"gemv_gguf_tc: kind must be one of {KINDS}, got {kind!r}")
    if x.dtype != torch.bfloat16 or x.dim() != 2 or not x.is_contiguous() or not 1 <= x.shape[0] <= MAX_M:
        raise KernelError(f"gemv_gguf_tc: x must be contiguous bf16 [M<={MAX_M}, K], got {x.dtype} {list(x.shape)}")
    m, k = x.shape
    if codes.dtype != torch.int32 or codes.dim() != 4 or codes.shape[2:] != (32, 4) or codes.shape[0] % 2:
        raise KernelError(f"gemv_gguf_tc: codes must be repack_gguf.tc_tile output, got {codes.dtype} "
                         f"{list(codes.shape)}")
    nt, kc = codes.shape[:2]
    sdt = torch.int32 if kind == "q4" else torch.int16
    if tuple(scales.shape) != (nt, kc, 32) or scales.dtype != sdt:
        raise KernelError(f"gemv_gguf_tc: {kind} scales must be {sdt} [{nt}, {kc}, 32], got {scales.dtype} "
                         f"{list(scales.shape)}")
    chunk = 64 if kind == "q4" else 32
    if k % 16 or k > kc * chunk:
        raise KernelError(f"gemv_gguf_tc: x has K={k}, weights hold K<={kc * chunk} (K a multiple of 16)")
    if out.dim() != 2 or out.shape[0] != m or out.shape[1] > nt * 16 or not out.is_contiguous() \
            or out.dtype not in (torch.bfloat16, torch.float32):
        raise KernelError(f"gemv_gguf_tc: out must be contiguous bf16/fp32 [{m}, N<={nt * 16}], got {out.dtype} "
                         f"{list(out.shape)}")
    if residual is not None and (residual.shape != out.shape or residual.dtype != torch.bfloat16
                                 or not residual.is_contiguous()):
        raise KernelError(f"gemv_gguf_tc: residual must be contiguous bf16 {list(out.shape)}")


def gemv_gguf_tc(x: torch.Tensor, kind: str, codes: torch.Tensor, scales: torch.Tensor, out: torch.Tensor, *,
                 unscale: float = 1.0, residual: torch.Tensor | None = None, warps: int | None = None,
                 workspace: tuple[torch.Tensor, torch.Tensor] | None = None, splits: int | None = None) -> None:
    """``out = x @ W^T (+ residual)``, W from ``repack_gguf.tc_tile`` (``kind`` "q4" or "q8", and its
    ``unscale``). No allocation, no host sync. ``workspace`` (``mma_frag.splitk_workspace``) lets
    narrow weights split K over more blocks."""
    _check(x, kind, codes, scales, out, residual)
    require_aligned("gemv_gguf_tc", x, codes)
    m, k = x.shape
    nt, kc = codes.shape[:2]
    sp, ws, tickets = launch_splits(workspace, splits, nt // 2, kc, out)
    kernel = _gemv_q4_kernel if kind == "q4" else _gemv_q8_kernel
    w = warps or nvfp4_block_warps(nt // 2 * sp, -(-kc // sp), compiled_regs(kernel))  # the same launch rule
    res = residual.reshape(-1) if residual is not None else out.reshape(-1)
    launch(kernel, (nt // 2, sp), 32 * w, x.view(torch.int32).reshape(-1), m, k, codes.reshape(-1),
           scales.reshape(-1), kc, np.float32(unscale), out.reshape(-1), out.shape[1], int(out.dtype == torch.float32),
           res.view(torch.int16) if res.dtype == torch.bfloat16 else res, int(residual is not None),
           ws, tickets, sp, shared_bytes=w * 256 * 4)


def gemv_gguf_tc_ref(x, kind, codes, scales, out, *, unscale=1.0, residual=None, warps=None) -> None:
    """Torch reference of ``gemv_gguf_tc`` (same arguments): the f16-rounded weights of the
    tiles times x rounded to f16 (as the kernel feeds the tensor cores), fp32 sums, one rounding."""
    _check(x, kind, codes, scales, out, residual)
    n, k = out.shape[1], x.shape[1]
    wf = tc_untile_dequant(kind, codes, scales, n, k, unscale)
    y = x.to(torch.float16).float() @ wf.t()
    if residual is not None:
        y = y + residual.float()
    out.copy_(y.to(out.dtype))


def warmup(device="cuda") -> None:
    """Compile and load both kernels for bf16/fp32 out, +-residual (numba specialises on types)."""
    from imp_kernels.launch import warmup as _run

    calls = []
    for qtype, nbytes in (("Q4_K", 144), ("Q6_K", 210)):
        raw = torch.zeros(32 * nbytes, dtype=torch.uint8, device=device)
        kind, codes, scales, _ = tc_tile(raw, qtype, 32, 256)
        x = torch.zeros(1, 256, dtype=torch.bfloat16, device=device)
        res = torch.zeros(1, 32, dtype=torch.bfloat16, device=device)
        for dt in (torch.bfloat16, torch.float32):
            for r in (None, res):
                calls.append((gemv_gguf_tc, (x, kind, codes, scales, torch.empty(1, 32, dtype=dt, device=device)),
                              {"residual": r}))
    _run(*calls)

