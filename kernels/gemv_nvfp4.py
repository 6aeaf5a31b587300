"""NVFP4 GEMV: ``out[m] = x[m] @ W^T * gscale (+ residual[m])`` for M = 1..8 rows of bf16 x.

Weights are the tiled layout of ``repack.nvfp4_tile`` (codes int32 [NT, KC, 32, 4], scales int16
[NT, KC, 32]) plus one float32 global scale on the device (a multiplier, ModelOpt's
``weight_scale_2``; pass ``1/weight_global_scale`` for compressed-tensors). One block computes
two 16-row tiles; its warps split the 64-column chunks (warp w takes chunks w, w+W, ...), each
lane loads 16 bytes of codes per chunk and tile, decodes E2M1 x E4M3 to f16 in registers and
issues ``mma.sync m16n8k16`` (fp32 accumulate); the warps' partial sums meet in shared memory.
Output bf16 or float32, optional fused residual add (``residual`` may alias ``out``).
"""

from __future__ import annotations

import numpy as np
from numba import types as nbt
import torch

from imp_kernels import ptx
from imp_kernels.compat import cuda
from imp_kernels.errors import KernelError
from imp_kernels.launch import RegisterBuilds, block_warps, compiled_regs, device_jit, jit, launch, require_aligned
from imp_kernels.mma_frag import (finish_tiles, launch_splits, load_x16_raw, nvfp4_frags, split_range, stash_frags,
                                  x16_to_f16)
from imp_kernels.repack import nvfp4_tile, nvfp4_untile

__all__ = ["warmup", "gemv_nvfp4", "gemv_nvfp4_ref", "nvfp4_block_warps", "MAX_WARPS"]

MAX_WARPS = 16
MAX_M = 8


@device_jit(inline="always")
def _load_chunk(codes, scales, kc_total, kc_end, tile0, lane, x32, m_rows, k, g, t, kc):
    """Raw loads of one 64-column chunk for both tiles (zeros past this split's end): codes, scales, x."""
    zw = np.uint32(0)
    zq = (zw, zw, zw, zw)
    wa, wb, xa, xb = zq, zq, zq, zq
    sa, sb = zw, zw
    if kc < kc_end:
        i0 = (tile0 * kc_total + kc) * 32 + lane
        wa = ptx.ld_v4(codes, i0 * 4)
        wb = ptx.ld_v4(codes, (i0 + kc_total * 32) * 4)
        sa = ptx.ld_u16(scales, i0)
        sb = ptx.ld_u16(scales, i0 + kc_total * 32)
        xa, xb = load_x16_raw(x32, m_rows, k, g, kc * 64 + 16 * t)
    return wa, wb, sa, sb, xa, xb


@device_jit(inline="always")
def _mma_chunk(acc, wa, wb, sa, sb, xa, xb):
    """acc (the two tiles' 8 fp32 accumulators) plus one chunk: decode E2M1 x E4M3 to f16, 8 mma."""
    a0, a1, a2, a3, b0, b1, b2, b3 = acc
    xf = x16_to_f16(xa, xb)
    sca = ptx.cvt_f16x2_e4m3x2(sa)
    scb = ptx.cvt_f16x2_e4m3x2(sb)
    sa_g = ptx.prmt(sca, 0, 0x1010)
    sa_g8 = ptx.prmt(sca, 0, 0x3232)
    sb_g = ptx.prmt(scb, 0, 0x1010)
    sb_g8 = ptx.prmt(scb, 0, 0x3232)
    for s in range(4):
        fa = nvfp4_frags(wa[s], sa_g, sa_g8)
        a0, a1, a2, a3 = ptx.mma_f16(fa[0], fa[1], fa[2], fa[3], xf[2 * s], xf[2 * s + 1], a0, a1, a2, a3)
        fb = nvfp4_frags(wb[s], sb_g, sb_g8)
        b0, b1, b2, b3 = ptx.mma_f16(fb[0], fb[1], fb[2], fb[3], xf[2 * s], xf[2 * s + 1], b0, b1, b2, b3)
    return a0, a1, a2, a3, b0, b1, b2, b3


# The kernel body, a plain function so the benchmark can build it at other register caps. Two chunks
# per warp in flight: the loads of chunk kc + 2W issue before chunk kc computes.
def _body(x32, m_rows, k, codes, scales, kc_total, gscale, out, n_cols, out_f32, res, has_res, ws, tickets,
          splits):
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
    acc = (z, z, z, z, z, z, z, z)
    kc0, kc1 = split_range(kc_total, splits)
    kc = kc0 + warp
    c0 = _load_chunk(codes, scales, kc_total, kc1, tile0, lane, x32, m_rows, k, g, t, kc)
    c1 = _load_chunk(codes, scales, kc_total, kc1, tile0, lane, x32, m_rows, k, g, t, kc + nwarps)
    while kc < kc1:
        c2 = _load_chunk(codes, scales, kc_total, kc1, tile0, lane, x32, m_rows, k, g, t, kc + 2 * nwarps)
        acc = _mma_chunk(acc, c0[0], c0[1], c0[2], c0[3], c0[4], c0[5])
        c0 = c1
        c1 = c2
        kc += nwarps
    a0, a1, a2, a3, b0, b1, b2, b3 = acc
    stash_frags(red, warp, g, t, a0, a1, a2, a3, b0, b1, b2, b3)
    cuda.syncthreads()
    finish_tiles(red, nwarps, tile0, m_rows, n_cols, gscale[0] * np.float32(16384.0), gscale, 0, out, out_f32,
                 res, has_res, ws, tickets, splits, flag)


# the default build: at most 96 registers (it takes 90, no spills). Measured on an H200 against 80
# (which spilled 8 B) and three chunks in flight (121 registers, or capped at 96 with spills): 3-6%
# faster at every real shape (bench/results, the GEMV launch shapes of 2026-12-04).
_gemv_nvfp4_kernel = jit(max_registers=96)(_body)
_BUILDS = RegisterBuilds("gemv_nvfp4", _gemv_nvfp4_kernel, _body)


def nvfp4_block_warps(tile_pairs: int, chunks: int, regs: int | None) -> int:
    """Warps per block (``launch.block_warps``: ~24 warps per SM, fewer when that fits the grid in
    fewer waves), at most one warp per chunk and MAX_WARPS."""
    return block_warps(tile_pairs, chunks, MAX_WARPS, regs)


def _check(x, codes, scales, gscale, out, residual):
    if x.dtype != torch.bfloat16 or x.dim() != 2 or not x.is_contiguous():
        raise KernelError(f"gemv_nvfp4: x must be contiguous bf16 [M, K], got {x.dtype} {list(x.shape)}")
    m, k = x.shape
    if not 1 <= m <= MAX_M:
        raise KernelError(f"gemv_nvfp4: M={m} rows of x, supported 1..{MAX_M}")
    if codes.dtype != torch.int32 or codes.dim() != 4 or codes.shape[2:] != (32, 4) or codes.shape[0] % 2:
        raise KernelError(f"gemv_nvfp4: codes must be repack.nvfp4_tile output, got {codes.dtype} {list(codes.shape)}")
    nt, kc = codes.shape[:2]
    if tuple(scales.shape) != (nt, kc, 32) or scales.dtype != torch.int16:
        raise KernelError(f"gemv_nvfp4: scales must be int16 [{nt}, {kc}, 32], got {scales.dtype} {list(scales.shape)}")
    if k % 16 or k > kc * 64:
        raise KernelError(f"gemv_nvfp4: x has K={k}, weights hold K<={kc * 64} (K must be a multiple of 16)")
    if out.dim() != 2 or out.shape[0] != m or out.shape[1] > nt * 16 or out.dtype not in (torch.bfloat16, torch.float32):
        raise KernelError(f"gemv_nvfp4: out must be bf16/fp32 [{m}, N<= {nt * 16}], got {out.dtype} {list(out.shape)}")
    if not out.is_contiguous():
        raise KernelError("gemv_nvfp4: out must be contiguous")
    if gscale.dtype != torch.float32 or gscale.numel() != 1:
        raise KernelError(f"gemv_nvfp4: gscale must be one float32 on the device, got {gscale.dtype} x{gscale.numel()}")
    if residual is not None and (residual.shape != out.shape or residual.dtype != torch.bfloat16
                                 or not residual.is_contiguous()):
        raise KernelError(f"gemv_nvfp4: residual must be contiguous bf16 {list(out.shape)}")


def gemv_nvfp4(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, gscale: torch.Tensor,
               out: torch.Tensor, *, residual: torch.Tensor | None = None, warps: int | None = None,
               workspace: tuple[torch.Tensor, torch.Tensor] | None = None, splits: int | None = None,
               variant: str = "default") -> None:
    """``out = x @ dequant(W)^T (+ residual)``; W in ``repack.nvfp4_tile`` layout. No allocation,
    no host sync (``gscale`` stays on the device). ``workspace`` (``mma_frag.splitk_workspace``)
    lets narrow weights split K over more blocks (``splits``: default ``split_plan``)."""
    _check(x, codes, scales, gscale, out, residual)
    require_aligned("gemv_nvfp4", x, codes)
    m, k = x.shape
    nt, kc = codes.shape[:2]
    n = out.shape[1]
    sp, ws, tickets = launch_splits(workspace, splits, nt // 2, kc, out)
    kern = _BUILDS.get(variant)
    w = warps or nvfp4_block_warps(nt // 2 * sp, -(-kc // sp), compiled_regs(kern))
    res = residual.reshape(-1) if residual is not None else out.reshape(-1)
    launch(kern, (nt // 2, sp), 32 * w,
           x.view(torch.int32).reshape(-1), m, k, codes.reshape(-1), scales.reshape(-1), kc,
           gscale.reshape(-1), out.reshape(-1), n, int(out.dtype == torch.float32),
           res.view(torch.int16) if res.dtype == torch.bfloat16 else res, int(residual is not None),
           ws, tickets, sp, shared_bytes=w * 256 * 4)


def nvfp4_dequant(codes_u8: torch.Tensor, scales_u8: torch.Tensor, gscale) -> torch.Tensor:
    """HF-layout NVFP4 -> float32 [N, K] (reference arithmetic, torch only)."""
    lut = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6],
                       dtype=torch.float32, device=codes_u8.device)
    q = torch.stack([codes_u8 & 15, codes_u8 >> 4], dim=-1).flatten(-2).long()
    vals = lut[q].unflatten(-1, (-1, 16))
    s = scales_u8.view(torch.float8_e4m3fn).float().unsqueeze(-1)
    g = gscale if isinstance(gscale, float) else gscale.float().reshape(-1)[0]
    return (vals * s).flatten(-2) * g


def gemv_nvfp4_ref(x, codes, scales, gscale, out, *, residual=None, warps=None, variant=None) -> None:
    """Torch reference of ``gemv_nvfp4`` (same arguments): dequantise, fp32 matmul, round once."""
    _check(x, codes, scales, gscale, out, residual)
    m, k = x.shape
    n = out.shape[1]
    cu8, su8 = nvfp4_untile(codes, scales, n, k)
    wf = nvfp4_dequant(cu8, su8, gscale)
    y = x.float() @ wf.t()
    if residual is not None:
        y = y + residual.float()
    out.copy_(y.to(out.dtype))


def warmup(device="cuda") -> None:
    """Compile and load every specialisation real calls use (bf16/fp32 out, with/without a
    residual) on tiny inputs: numba specialises on dtypes, not sizes."""
    from imp_kernels.launch import warmup as _run

    codes = torch.zeros(32, 32, dtype=torch.uint8, device=device)
    scales = torch.full((32, 4), 0x38, dtype=torch.uint8, device=device)
    ct, st = nvfp4_tile(codes, scales)
    x = torch.zeros(1, 64, dtype=torch.bfloat16, device=device)
    gs = torch.ones(1, device=device)
    res = torch.zeros(1, 32, dtype=torch.bfloat16, device=device)
    calls = []
    for dt in (torch.bfloat16, torch.float32):
        for r in (None, res):
            calls.append((gemv_nvfp4, (x, ct, st, gs, torch.empty(1, 32, dtype=dt, device=device)),
                          {"residual": r}))
    _run(*calls)
