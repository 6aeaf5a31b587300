"""NVFP4 expert stacks in the GEMV kernels' tiled layout -> dense bf16 or fp32, on the device.

Once Phase 3-MoE has re-tiled a layer's NVFP4 experts for the decode kernels (``repack.nvfp4_tile``:
codes int32 [E, NT, KC, 32, 4], e4m3 scales int16 [E, NT, KC, 32]), the checkpoint-layout copy is
no longer needed for decode; prefill and the reference path can dequantise from the tiled buffers
with this kernel, so the engine keeps one copy of the experts. One thread per 32-bit code word
(8 weights: rows g and g+8 of a 16-row tile, 4 columns each, see ``repack``'s module notes); the
arithmetic is the reference dequantisation's: ``E2M1 * E4M3`` exact in fp32, times the global
multiplier (one per expert, or one per expert and half of the rows for a fused gate|up stack), one
rounding to the output dtype (round to nearest even for bf16). Padding rows and columns of the
tiles are skipped.
"""

from __future__ import annotations

import numpy as np
import torch

from imp_kernels import ptx
from imp_kernels.compat import cuda
from imp_kernels.launch import jit, launch
from imp_kernels.ops_common import check

__all__ = ["nvfp4_tiled_dequant", "THREADS"]

THREADS = 256


@jit
def _dequant_kernel(codes, scales, glob, groups, group_rows, out, f32, n, k, nt, kc):
    i = cuda.grid(1)
    if i >= codes.shape[0]:
        return
    per_e = nt * kc * 128
    e = i // per_e
    r = i - e * per_e
    s = r & 3
    lane = (r >> 2) & 31
    tile = r >> 7  # nt_i * kc + kc_i
    nt_i = tile // kc
    kc_i = tile - nt_i * kc
    g = lane >> 2
    t = lane & 3
    w = np.int64(codes[i]) & 0xFFFFFFFF
    sw = np.uint32(np.int64(scales[e * nt * kc * 32 + tile * 32 + lane]) & 0xFFFF)
    sf = ptx.cvt_f16x2_e4m3x2(sw)
    col0 = kc_i * 64 + t * 16 + s * 4
    for v in range(4):
        h = v & 1
        row = nt_i * 16 + h * 8 + g
        if row < n:
            sc = ptx.f16_hi(sf) if h else ptx.f16_lo(sf)
            grp = row // group_rows if groups > 1 else 0
            gs = glob[e * groups + grp]
            for dj in range(2):
                col = col0 + (v >> 1) * 2 + dj
                if col < k:
                    mag = (w >> (3 * v + 16 * dj)) & 7
                    ex = mag >> 1
                    if ex == 0:
                        m = np.float32(0.5) * np.float32(mag & 1)
                    else:
                        m = (np.float32(1.0) + np.float32(0.5) * np.float32(mag & 1)) * np.float32(1 << (ex - 1))
                    if (w >> (15 - v + 16 * dj)) & 1:
                        m = -m
                    val = np.float32(m * sc) * gs
                    o = (e * n + row) * k + col
                    if f32:
                        out[o] = val
                    else:
                        out[o] = np.uint16(ptx.cvt_bf16_f32(val))


def nvfp4_tiled_dequant(codes_t: torch.Tensor, scales_t: torch.Tensor, global_scale: torch.Tensor, n: int, k: int,
                        dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Tiled NVFP4 stack (codes int32 [E, NT, KC, 32, 4], scales int16 [E, NT, KC, 32], global fp32
    [E] or [E, 2]) -> dense [E, n, k] in ``dtype`` (bfloat16 or float32)."""
    check(codes_t.dim() == 5 and tuple(codes_t.shape[3:]) == (32, 4) and codes_t.dtype == torch.int32
          and codes_t.is_contiguous(), f"nvfp4_tiled_dequant: codes must be contiguous int32 [E, NT, KC, 32, 4], "
                                      f"got {codes_t.dtype} {list(codes_t.shape)}")
    e, nt, kc = (int(d) for d in codes_t.shape[:3])
    check(scales_t.dtype == torch.int16 and tuple(scales_t.shape) == (e, nt, kc, 32) and scales_t.is_contiguous(),
          f"nvfp4_tiled_dequant: scales must be contiguous int16 [{e}, {nt}, {kc}, 32], got {scales_t.dtype} "
          f"{list(scales_t.shape)}")
    check(nt * 16 >= n > (nt - 2) * 16 and kc * 64 >= k > (kc - 1) * 64 and k % 16 == 0,
          f"nvfp4_tiled_dequant: [{n}, {k}] does not match {nt} row tiles and {kc} column chunks")
    glob = global_scale.to(torch.float32).reshape(e, -1).contiguous()
    groups = int(glob.shape[1])
    check(groups in (1, 2) and n % groups == 0,
          f"nvfp4_tiled_dequant: global scale must be [E] or [E, 2] (rows split evenly), got {list(global_scale.shape)}")
    check(dtype in (torch.bfloat16, torch.float32), f"nvfp4_tiled_dequant: dtype must be bfloat16 or float32, got {dtype}")
    out = torch.empty(e, n, k, dtype=dtype, device=codes_t.device)
    total = codes_t.numel()
    launch(_dequant_kernel, (total + THREADS - 1) // THREADS, THREADS, codes_t.reshape(-1), scales_t.reshape(-1),
           glob.reshape(-1), groups, n // groups, out.reshape(-1), dtype == torch.float32, n, k, nt, kc)
    return out
