"""FP8 (e4m3) GEMV: ``out = x @ (W * scale)^T (+ residual)`` for M = 1..8 rows of bf16 x.

W is ``repack.fp8_tile`` output (int32 [NT, KC, 32, 4], 32-column chunks). ``scale`` is float32
on the device and selects the granularity by its shape:
  [1] per-tensor; [N] (or [N, 1]) per-channel (per output row); [ceil(N/128), ceil(K/128)] the
  128x128 block scales of HF/DeepSeek ``weight_scale_inv`` (multiplied, despite the name);
  [ceil(N/32), ceil(K/128)] the same at 32-row granularity (each 128-row block repeated: rows of
  different tensors can then be joined or regrouped 32 at a time, e.g. Qwen3.6's q|gate|k|v).
Each lane converts its e4m3 pairs with ``cvt.rn.f16x2.e4m3x2`` (exact) and feeds ``mma.sync``
(fp32 accumulate). Per-tensor/per-channel scales are applied once in the epilogue; block scales
per 32-column chunk (a chunk never straddles a 128 block).
"""

from __future__ import annotations

import numpy as np
from numba import types as nbt
import torch

from imp_kernels import ptx
from imp_kernels.compat import cuda
from imp_kernels.errors import KernelError
from imp_kernels.launch import RegisterBuilds, block_warps, compiled_regs, device_jit, jit, launch, require_aligned
from imp_kernels.mma_frag import bf16x2_to_f16x2, finish_tiles, launch_splits, load_x8_bf16, split_range, stash_frags
from imp_kernels.repack import fp8_untile

__all__ = ["warmup", "gemv_fp8", "gemv_fp8_ref"]

MAX_WARPS = 16
MAX_M = 8
PER_TENSOR, PER_CHANNEL, BLOCK128, BLOCK32 = 0, 1, 2, 3


@device_jit(inline="always")
def _fp8_frags(wg, wg8):
    """Two code words (row g / row g+8, 4 e4m3 each) -> 4 f16x2 A fragments."""
    return (ptx.cvt_f16x2_e4m3x2(np.uint32(wg & 0xFFFF)), ptx.cvt_f16x2_e4m3x2(np.uint32(wg8 & 0xFFFF)),
            ptx.cvt_f16x2_e4m3x2(np.uint32(wg >> 16)), ptx.cvt_f16x2_e4m3x2(np.uint32(wg8 >> 16)))


@device_jit(inline="always")
def _load_fp8_chunk(x32, m_rows, k, codes, kc_total, kc_end, tile0, lane, g, t, kc):
    zw = np.uint32(0)
    wa, wb, xq = (zw, zw, zw, zw), (zw, zw, zw, zw), (zw, zw, zw, zw)
    if kc < kc_end:
        i0 = (tile0 * kc_total + kc) * 32 + lane
        wa = ptx.ld_v4(codes, i0 * 4)
        wb = ptx.ld_v4(codes, (i0 + kc_total * 32) * 4)
        xq = load_x8_bf16(x32, m_rows, k, g, kc * 32 + 8 * t)
    return wa, wb, xq


def _body(x32, m_rows, k, codes, kc_total, scale, mode, kb_total, out, n_cols, out_f32, res, has_res, ws, tickets,
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
    # a block's 32 rows lie in one scale row: of 128 rows (32 | 128) or of 32
    srow = ((tile0 * 16) >> 7) if mode == 2 else cuda.blockIdx.x
    z = np.float32(0.0)
    a0, a1, a2, a3, b0, b1, b2, b3 = z, z, z, z, z, z, z, z
    # software pipeline two chunks deep (kc+W, kc+2W in flight while kc computes)
    kc0, kc1 = split_range(kc_total, splits)
    kc = kc0 + warp
    wa, wb, xq = _load_fp8_chunk(x32, m_rows, k, codes, kc_total, kc1, tile0, lane, g, t, kc)
    pa, pb, px = _load_fp8_chunk(x32, m_rows, k, codes, kc_total, kc1, tile0, lane, g, t, kc + nwarps)
    while kc < kc1:
        kn = kc + nwarps
        na, nb, nx = _load_fp8_chunk(x32, m_rows, k, codes, kc_total, kc1, tile0, lane, g, t, kn + nwarps)
        x0 = bf16x2_to_f16x2(xq[0])
        x1 = bf16x2_to_f16x2(xq[1])
        x2 = bf16x2_to_f16x2(xq[2])
        x3 = bf16x2_to_f16x2(xq[3])
        fa = _fp8_frags(wa[0], wa[1])
        fb = _fp8_frags(wb[0], wb[1])
        if mode >= 2:
            c0, c1, c2, c3 = ptx.mma_f16(fa[0], fa[1], fa[2], fa[3], x0, x1, z, z, z, z)
            d0, d1, d2, d3 = ptx.mma_f16(fb[0], fb[1], fb[2], fb[3], x0, x1, z, z, z, z)
        else:
            c0, c1, c2, c3 = ptx.mma_f16(fa[0], fa[1], fa[2], fa[3], x0, x1, a0, a1, a2, a3)
            d0, d1, d2, d3 = ptx.mma_f16(fb[0], fb[1], fb[2], fb[3], x0, x1, b0, b1, b2, b3)
        fa = _fp8_frags(wa[2], wa[3])
        fb = _fp8_frags(wb[2], wb[3])
        c0, c1, c2, c3 = ptx.mma_f16(fa[0], fa[1], fa[2], fa[3], x2, x3, c0, c1, c2, c3)
        d0, d1, d2, d3 = ptx.mma_f16(fb[0], fb[1], fb[2], fb[3], x2, x3, d0, d1, d2, d3)
        if mode >= 2:
            sblk = scale[srow * kb_total + (kc >> 2)]  # the chunk lies in one 128-column block
            a0 += c0 * sblk
            a1 += c1 * sblk
            a2 += c2 * sblk
            a3 += c3 * sblk
            b0 += d0 * sblk
            b1 += d1 * sblk
            b2 += d2 * sblk
            b3 += d3 * sblk
        else:
            a0, a1, a2, a3, b0, b1, b2, b3 = c0, c1, c2, c3, d0, d1, d2, d3
        wa, wb, xq = pa, pb, px
        pa, pb, px = na, nb, nx
        kc = kn
    stash_frags(red, warp, g, t, a0, a1, a2, a3, b0, b1, b2, b3)
    cuda.syncthreads()
    mul = scale[0] if mode == 0 else np.float32(1.0)
    finish_tiles(red, nwarps, tile0, m_rows, n_cols, mul, scale, mode == 1, out, out_f32, res, has_res, ws, tickets,
                 splits, flag)


# At most 80 registers (it takes 78, no spills). A cap of 64 (32 warps/SM) spilled 32 B a thread once
# the 32-row block scales came in: Mistral's gate_up 187 -> 113 us at 80 (71% of the copy bandwidth),
# measured on an H200 (bench/results, the GEMV launch shapes of 2026-12-04).
_gemv_fp8_kernel = jit(max_registers=80)(_body)
_BUILDS = RegisterBuilds("gemv_fp8", _gemv_fp8_kernel, _body)


def _scale_mode(scale: torch.Tensor, n: int, k: int) -> tuple[int, int]:
    if scale.dtype != torch.float32:
        raise KernelError(f"gemv_fp8: scale must be float32 on the device, got {scale.dtype}")
    if scale.numel() == 1:
        return PER_TENSOR, 1
    if scale.dim() in (1, 2) and scale.shape[0] == n and scale.numel() == n:
        return PER_CHANNEL, 1
    kb = -(-k // 128)
    if tuple(scale.shape) == (-(-n // 128), kb):
        return BLOCK128, kb
    if tuple(scale.shape) == (-(-n // 32), kb):
        return BLOCK32, kb
    raise KernelError(f"gemv_fp8: scale shape {list(scale.shape)} is none of [1], [{n}], "
                     f"[{-(-n // 128)}, {kb}], [{-(-n // 32)}, {kb}] (per-tensor, per-channel, 128x128 blocks, "
                     f"the blocks at 32-row granularity)")


def _check(x, codes, scale, out, residual):
    if x.dtype != torch.bfloat16 or x.dim() != 2 or not x.is_contiguous():
        raise KernelError(f"gemv_fp8: x must be contiguous bf16 [M, K], got {x.dtype} {list(x.shape)}")
    m, k = x.shape
    if not 1 <= m <= MAX_M or k % 8:
        raise KernelError(f"gemv_fp8: need 1 <= M <= {MAX_M} and K % 8 == 0, got x {list(x.shape)}")
    if codes.dtype != torch.int32 or codes.dim() != 4 or codes.shape[2:] != (32, 4) or codes.shape[0] % 2:
        raise KernelError(f"gemv_fp8: codes must be repack.fp8_tile output, got {codes.dtype} {list(codes.shape)}")
    nt, kc = codes.shape[:2]
    if k > kc * 32:
        raise KernelError(f"gemv_fp8: x has K={k}, weights hold K<={kc * 32}")
    if out.dim() != 2 or out.shape[0] != m or out.shape[1] > nt * 16 or not out.is_contiguous() \
            or out.dtype not in (torch.bfloat16, torch.float32):
        raise KernelError(f"gemv_fp8: out must be contiguous bf16/fp32 [{m}, N<={nt * 16}], got {out.dtype} {list(out.shape)}")
    if residual is not None and (residual.shape != out.shape or residual.dtype != torch.bfloat16
                                 or not residual.is_contiguous()):
        raise KernelError(f"gemv_fp8: residual must be contiguous bf16 {list(out.shape)}")
    return _scale_mode(scale, out.shape[1], k)


def gemv_fp8(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, out: torch.Tensor, *,
             residual: torch.Tensor | None = None, warps: int | None = None,
             workspace: tuple[torch.Tensor, torch.Tensor] | None = None, splits: int | None = None,
             variant: str = "default") -> None:
    """``out = x @ (W * scale)^T (+ residual)``; W from ``repack.fp8_tile``. No allocation/sync.
    ``workspace`` (``mma_frag.splitk_workspace``) lets narrow weights split K over more blocks."""
    mode, kb = _check(x, codes, scale, out, residual)
    require_aligned("gemv_fp8", x, codes)
    m, k = x.shape
    nt, kc = codes.shape[:2]
    n = out.shape[1]
    sp, ws, tickets = launch_splits(workspace, splits, nt // 2, kc, out)
    kern = _BUILDS.get(variant)
    if warps is None:
        warps = block_warps(nt // 2 * sp, -(-kc // sp), MAX_WARPS, compiled_regs(kern))
    res = residual if residual is not None else out
    launch(kern, (nt // 2, sp), 32 * warps, x.view(torch.int32).reshape(-1), m, k,
           codes.reshape(-1), kc, scale.reshape(-1), mode, kb, out.reshape(-1), n,
           int(out.dtype == torch.float32),
           res.reshape(-1).view(torch.int16) if res.dtype == torch.bfloat16 else res.reshape(-1),
           int(residual is not None), ws, tickets, sp, shared_bytes=warps * 256 * 4)


def fp8_dequant(w_u8: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """e4m3 bits [N, K] x scale (per-tensor / per-channel / 128x128 or 32x128 blocks) -> float32 [N, K]."""
    n, k = w_u8.shape
    w = w_u8.view(torch.float8_e4m3fn).float()
    s = scale.float()
    if s.numel() == 1:
        return w * s.reshape(())
    if s.numel() == n:
        return w * s.reshape(n, 1)
    rows = 128 if s.shape[0] == -(-n // 128) else 32
    full = s.repeat_interleave(rows, 0)[:n].repeat_interleave(128, 1)[:, :k]
    return w * full


def gemv_fp8_ref(x, codes, scale, out, *, residual=None, warps=None, variant=None) -> None:
    """Torch reference of ``gemv_fp8`` (same arguments)."""
    _check(x, codes, scale, out, residual)
    m, k = x.shape
    n = out.shape[1]
    wf = fp8_dequant(fp8_untile(codes, n, k), scale)
    y = x.float() @ wf.t()
    if residual is not None:
        y = y + residual.float()
    out.copy_(y.to(out.dtype))


def warmup(device="cuda") -> None:
    """Compile and load the specialisations real calls use (bf16/fp32 out, +-residual)."""
    from imp_kernels.launch import warmup as _run

    from imp_kernels.repack import fp8_tile

    ct = fp8_tile(torch.zeros(32, 32, dtype=torch.uint8, device=device))
    x = torch.zeros(1, 32, dtype=torch.bfloat16, device=device)
    sc = torch.ones(1, device=device)
    res = torch.zeros(1, 32, dtype=torch.bfloat16, device=device)
    _run(*[(gemv_fp8, (x, ct, sc, torch.empty(1, 32, dtype=dt, device=device)), {"residual": r})
           for dt in (torch.bfloat16, torch.float32) for r in (None, res)])
