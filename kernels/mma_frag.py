"""Activation fragments and decoders shared by the tensor-core GEMV kernels.

The quantized GEMVs feed ``mma.sync m16n8k16`` with A = 16 weight rows (decoded to f16 in
registers) and B = the activations (M <= 8 rows of x as the 8 columns of B), accumulating in
fp32. Lane ``4g + t`` supplies B column ``g``, i.e. activation row ``m = g``; lanes with
``g >= M`` supply zeros. Activations arrive as bf16 bits packed two per int32 word
(``x.view(torch.int32)``) and become f16 here: exact for |x| in [2^-14, 65504], a 2^-25 absolute
error below that, and +-inf above 65504 (activations entering a projection are post-norm and far
below that; documented limit of the quantized GEMVs).
"""

from __future__ import annotations

import numpy as np
import torch

from imp_kernels import ptx
from imp_kernels.compat import cuda
from imp_kernels.launch import device_jit

__all__ = ["bf16x2_to_f16x2", "load_x16_f16", "load_x16_raw", "x16_to_f16", "load_x8_f16", "load_x8_bf16", "nvfp4_frags",
           "store_out", "stash_frags", "warp_sum", "split_range", "finish_tiles", "split_plan", "splitk_workspace",
           "launch_splits"]


@device_jit(inline="always")
def bf16x2_to_f16x2(w):
    lo = ptx.bits_to_f32(np.uint32((int(w) & 0xFFFF) << 16))
    hi = ptx.bits_to_f32(np.uint32(int(w) & 0xFFFF0000))
    return ptx.cvt_f16x2_f32(hi, lo)


@device_jit(inline="always")
def load_x16_f16(x32, m_rows, k, g, kcol):
    """f16x2 words of x[g, kcol:kcol+16] (8 words), zeros when g >= M or kcol >= K."""
    if g < m_rows and kcol < k:
        base = (g * k + kcol) >> 1
        a = ptx.ld_v4_cached(x32, base)
        b = ptx.ld_v4_cached(x32, base + 4)
        return (bf16x2_to_f16x2(a[0]), bf16x2_to_f16x2(a[1]), bf16x2_to_f16x2(a[2]),
                bf16x2_to_f16x2(a[3]), bf16x2_to_f16x2(b[0]), bf16x2_to_f16x2(b[1]),
                bf16x2_to_f16x2(b[2]), bf16x2_to_f16x2(b[3]))
    z = np.uint32(0)
    return (z, z, z, z, z, z, z, z)


@device_jit(inline="always")
def load_x16_raw(x32, m_rows, k, g, kcol):
    """bf16x2 words of x[g, kcol:kcol+16] as stored (two 4-word tuples), zeros when out of range.
    Convert with ``x16_to_f16`` only when needed, so a prefetch does not wait for the load."""
    if g < m_rows and kcol < k:
        base = (g * k + kcol) >> 1
        return ptx.ld_v4_cached(x32, base), ptx.ld_v4_cached(x32, base + 4)
    z = np.uint32(0)
    return (z, z, z, z), (z, z, z, z)


@device_jit(inline="always")
def x16_to_f16(a, b):
    return (bf16x2_to_f16x2(a[0]), bf16x2_to_f16x2(a[1]), bf16x2_to_f16x2(a[2]),
            bf16x2_to_f16x2(a[3]), bf16x2_to_f16x2(b[0]), bf16x2_to_f16x2(b[1]),
            bf16x2_to_f16x2(b[2]), bf16x2_to_f16x2(b[3]))


@device_jit(inline="always")
def load_x8_f16(x32, m_rows, k, g, kcol):
    """f16x2 words of x[g, kcol:kcol+8] (4 words), zeros when g >= M or kcol >= K."""
    if g < m_rows and kcol < k:
        a = ptx.ld_v4_cached(x32, (g * k + kcol) >> 1)
        return (bf16x2_to_f16x2(a[0]), bf16x2_to_f16x2(a[1]), bf16x2_to_f16x2(a[2]),
                bf16x2_to_f16x2(a[3]))
    z = np.uint32(0)
    return (z, z, z, z)


@device_jit(inline="always")
def load_x8_bf16(x32, m_rows, k, g, kcol):
    """bf16x2 words of x[g, kcol:kcol+8] as stored (4 words), zeros when g >= M or kcol >= K."""
    if g < m_rows and kcol < k:
        return ptx.ld_v4_cached(x32, (g * k + kcol) >> 1)
    z = np.uint32(0)
    return (z, z, z, z)


@device_jit(inline="always")
def nvfp4_frags(w, s_g, s_g8):
    """One NVFP4 code word -> the 4 f16x2 A fragments, each times its row's block scale.

    ``s_g`` / ``s_g8`` are f16x2 words holding the row-g / row-g+8 scale twice. The decoded
    value is E2M1 * 2^-14 (see repack), the product E2M1 * 2^-14 * e4m3 is exact in f16
    (including its subnormals), so the only rounding left is the fp32 accumulation.
    """
    v0 = ((w << 9) & 0x0E000E00) | (w & 0x80008000)
    v1 = ((w << 6) & 0x0E000E00) | ((w << 1) & 0x80008000)
    v2 = ((w << 3) & 0x0E000E00) | ((w << 2) & 0x80008000)
    v3 = (w & 0x0E000E00) | ((w << 3) & 0x80008000)
    return (ptx.hmul2(np.uint32(v0), s_g), ptx.hmul2(np.uint32(v1), s_g8),
            ptx.hmul2(np.uint32(v2), s_g), ptx.hmul2(np.uint32(v3), s_g8))


@device_jit(inline="always")
def store_out(out, out_f32, res, has_res, m, n_cols, row, val):
    """out[m, row] = val (+ residual[m, row]); bf16 bits (uint16 array) or float32."""
    i = m * n_cols + row
    if has_res:
        val += ptx.bits_to_f32(np.uint32((int(res[i]) & 0xFFFF) << 16))
    if out_f32:
        out[i] = val
    else:
        out[i] = ptx.cvt_bf16_f32(np.float32(val))


@device_jit(inline="always")
def stash_frags(red, warp, g, t, a0, a1, a2, a3, b0, b1, b2, b3):
    """Write one warp's two m16n8 accumulator tiles (32 weight rows x 8 activation rows) into
    the flat shared buffer ``red`` laid out [warps, 32 rows, 8 cols]."""
    base = warp * 256 + 2 * t
    red[base + g * 8] = a0
    red[base + g * 8 + 1] = a1
    red[base + (g + 8) * 8] = a2
    red[base + (g + 8) * 8 + 1] = a3
    red[base + (16 + g) * 8] = b0
    red[base + (16 + g) * 8 + 1] = b1
    red[base + (24 + g) * 8] = b2
    red[base + (24 + g) * 8 + 1] = b3


@device_jit(inline="always")
def warp_sum(red, idx, nwarps):
    """Sum of entry ``idx`` of every warp's [32, 8] tile in ``red`` (after a block barrier)."""
    acc = np.float32(0.0)
    for w in range(nwarps):
        acc += red[w * 256 + idx]
    return acc


# ------------------------------------------------------------------------------- split-K
# A GEMV with few output rows (N = 2048..6144 at decode) has fewer blocks than two waves of 132
# SMs: 160 blocks of two tiles for N = 5120 leave most SMs idle for the second wave. Splitting K
# over blockIdx.y gives more, shorter blocks; each split's sums go to its slice of a workspace
# and the last block of a tile pair to arrive (a ticket) adds the slices in split order, so the
# result does not depend on the blocks' order (graph replays stay bit-identical).
SPLIT_MAX = 8


SPLIT_MIN_CHUNKS = 256


def split_plan(tile_pairs: int, chunks: int) -> int:
    """Splits of K for a GEMV of ``tile_pairs`` blocks and ``chunks`` K-chunks: enough blocks for
    about three waves of 132 SMs. Only long rows (>= 256 chunks) split: the ticket and the second
    pass cost ~4 us, measured on an H200 (Mistral's down projection, K = 32768: NVFP4 57.8 -> 45.1
    us, Q6_K 80.4 -> 62.3 us; Qwen3.6's out_proj, K = 4096: 6.8 -> 10.7 us)."""
    if tile_pairs >= 2 * 132 or chunks < SPLIT_MIN_CHUNKS:
        return 1
    return max(1, min(SPLIT_MAX, -(-3 * 132 // tile_pairs), chunks // 8))


def splitk_workspace(n_rows: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial sums float32 [SPLIT_MAX * 8 * N], tickets int32 [tile pairs], zero) for a GEMV
    of ``n_rows`` outputs and up to 8 activation rows; allocated once per weight."""
    pairs = -(-n_rows // 32)
    return (torch.zeros(SPLIT_MAX * 8 * pairs * 32, dtype=torch.float32, device=device),
            torch.zeros(pairs, dtype=torch.int32, device=device))


_DUMMIES: dict = {}


def launch_splits(workspace, splits, tile_pairs: int, chunks: int, out: torch.Tensor):
    """(splits, partial sums, tickets) launch arguments: without a workspace one split and
    placeholders (never written: a 1-D float32 and int32 tensor cached per device)."""
    if workspace is None or splits == 1:
        d = _DUMMIES.get(out.device)
        if d is None:
            d = _DUMMIES[out.device] = (torch.zeros(1, dtype=torch.float32, device=out.device),
                                        torch.zeros(1, dtype=torch.int32, device=out.device))
        return 1, d[0], d[1]
    ws, tickets = workspace
    sp = splits or split_plan(tile_pairs, chunks)
    if ws.dtype != torch.float32 or tickets.dtype != torch.int32 or tickets.numel() < tile_pairs \
            or ws.numel() < sp * tile_pairs * 256 or not 1 <= sp <= SPLIT_MAX:
        from imp_kernels.errors import KernelError

        raise KernelError(f"split-K workspace too small or of the wrong type for {tile_pairs} tile pairs x {sp} "
                          f"splits (use mma_frag.splitk_workspace)")
    return sp, ws, tickets


@device_jit(inline="always")
def split_range(kc_total, splits):
    """[kc0, kc1): the K chunks of this block's split (blockIdx.y)."""
    per = (kc_total + splits - 1) // splits
    kc0 = cuda.blockIdx.y * per
    return kc0, min(kc_total, kc0 + per)


@device_jit(inline="always")
def finish_tiles(red, nwarps, tile0, m_rows, n_cols, mul, rowscale, per_row, out, out_f32, res, has_res, ws,
                 tickets, splits, flag):
    """Store a block's two 16-row tiles (after the barrier that completed ``red``), times ``mul``
    (and ``rowscale[row]`` when ``per_row``): directly, or with a K split (see above). ``flag``:
    a shared int32 [1]."""
    tid = cuda.threadIdx.x
    if splits == 1:
        for idx in range(tid, 256, cuda.blockDim.x):
            r = idx >> 3
            m = idx & 7
            row = tile0 * 16 + r
            if m < m_rows and row < n_cols:
                v = warp_sum(red, idx, nwarps) * mul
                if per_row:
                    v *= rowscale[row]
                store_out(out, out_f32, res, has_res, m, n_cols, row, v)
        return
    pair = cuda.blockIdx.x
    slab = cuda.gridDim.x * 256
    for idx in range(tid, 256, cuda.blockDim.x):
        ws[cuda.blockIdx.y * slab + pair * 256 + idx] = warp_sum(red, idx, nwarps)
    cuda.threadfence()
    cuda.syncthreads()
    if tid == 0:
        flag[0] = 1 if cuda.atomic.add(tickets, pair, 1) == splits - 1 else 0
    cuda.syncthreads()
    if flag[0] == 0:
        return
    for idx in range(tid, 256, cuda.blockDim.x):
        r = idx >> 3
        m = idx & 7
        row = tile0 * 16 + r
        if m < m_rows and row < n_cols:
            acc = np.float32(0.0)
            for sp in range(splits):  # in split order; an atomic read sees the other blocks' stores
                acc += cuda.atomic.add(ws, sp * slab + pair * 256 + idx, np.float32(0.0))
            acc *= mul
            if per_row:
                acc *= rowscale[row]
            store_out(out, out_f32, res, has_res, m, n_cols, row, acc)
    if tid == 0:
        tickets[pair] = 0
