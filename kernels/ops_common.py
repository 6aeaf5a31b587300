"""Device helpers shared by the decode-op kernels (norms, RoPE, attention, DeltaNet, routers,
sampling), each with a CUDA-simulator twin where the GPU version is an intrinsic.

* ``ld_bf16(arr, i)`` / ``st_bf16(arr, i, f)``: one bf16 (uint16 bits view) <-> float32.
* ``bf16_round(f)``: float32 rounded to bf16 (nearest even) and back, i.e. what a torch bf16 op
  does to its fp32 result.
* ``lo_f32(w)`` / ``hi_f32(w)`` / ``pack_bf16(lo, hi)``: the two bf16 halves of a 32-bit word.
* ``st_v4(arr, i, a, b, c, d)``: one 16-byte store of 4 words (``arr`` a 1-D uint32/int32 array,
  ``i`` a multiple of 4); imp_kernels.ptx only has loads.
* ``shfl_idx_f32(v, src)``: every lane reads ``v`` of lane ``src`` (full warp; the simulator has
  no warp shuffles, so its twin exchanges through a per-warp barrier like ``ptx.shfl_xor_f32``).
* ``warp_sum(v)``: butterfly sum over the 32 lanes (every lane gets it).
* ``block_sum(v, scratch)`` / ``block_max(v, scratch)``: all threads get the block-wide result;
  ``scratch`` is a shared float32 array of >= 32 entries; every thread of the block must call.
* ``u32(t)``: flat uint32 word view of a contiguous tensor (kernel argument for 16-byte access).
* ``check(ok, msg)`` / ``want(t, ...)``: argument checks that raise ``KernelError``.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from imp_kernels import ptx
from imp_kernels.compat import SIMULATOR, cuda
from imp_kernels.errors import KernelError
from imp_kernels.launch import device_jit

__all__ = ["ld_bf16", "st_bf16", "bf16_round", "lo_f32", "hi_f32", "pack_bf16",
           "st_v4", "shfl_idx_f32", "warp_sum", "block_sum", "block_max", "check", "want", "u32", "NEG_INF"]

NEG_INF = np.float32(-np.inf)


def check(ok: bool, msg: str) -> None:
    """Raise ``KernelError(msg)`` unless ``ok``."""
    if not ok:
        raise KernelError(msg)


def want(t: torch.Tensor | None, name: str, kernel: str, dtype: torch.dtype, shape: tuple) -> None:
    """One-line check of a tensor argument: dtype, exact shape, contiguity."""
    check(t is not None, f"{kernel}: {name} is required")
    check(t.dtype == dtype and tuple(t.shape) == tuple(shape) and t.is_contiguous(),
          f"{kernel}: {name} must be contiguous {str(dtype).replace('torch.', '')} {list(shape)}, "
          f"got {str(t.dtype).replace('torch.', '')} {list(t.shape)}"
          f"{'' if t.is_contiguous() else ' (not contiguous)'}")


def _cuda_word_dtype() -> torch.dtype:
    """uint32 if this torch exports it through ``__cuda_array_interface__`` (its typestr table
    has it), else int32; the kernels accept either, since words are loaded and stored as bits."""
    try:
        from torch._tensor import _dtype_to_typestr

        _dtype_to_typestr(torch.uint32)
        return torch.uint32
    except Exception:
        return torch.int32


_CUDA_WORD = _cuda_word_dtype()


def u32(t: torch.Tensor) -> torch.Tensor:
    """Flat 32-bit word view of a contiguous tensor (bf16 pairs become one word): uint32, or
    int32 on a torch whose CUDA array interface lacks uint32."""
    return t.reshape(-1).view(_CUDA_WORD if t.is_cuda else torch.uint32)


@device_jit(inline="always")
def ld_bf16(arr, i):
    return ptx.bits_to_f32(np.uint32((int(arr[i]) & 0xFFFF) << 16))


@device_jit(inline="always")
def st_bf16(arr, i, f):
    arr[i] = ptx.cvt_bf16_f32(np.float32(f))


@device_jit(inline="always")
def bf16_round(f):
    return ptx.bits_to_f32(np.uint32(int(ptx.cvt_bf16_f32(np.float32(f))) << 16))


@device_jit(inline="always")
def lo_f32(w):
    return ptx.bits_to_f32(np.uint32((int(w) & 0xFFFF) << 16))


@device_jit(inline="always")
def hi_f32(w):
    return ptx.bits_to_f32(np.uint32(int(w) & 0xFFFF0000))


@device_jit(inline="always")
def pack_bf16(lo, hi):
    return np.uint32(int(ptx.cvt_bf16_f32(np.float32(lo))) | (int(ptx.cvt_bf16_f32(np.float32(hi))) << 16))


if not SIMULATOR:
    from llvmlite import ir
    from numba import types
    from numba.cuda.extending import intrinsic

    @intrinsic
    def st_v4(typingctx, arr, i, a, b, c, d):
        if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype in (types.uint32, types.int32)):
            raise TypeError(f"st_v4 expects a 1-D uint32/int32 array, got {arr}")
        sig = types.void(arr, i, a, b, c, d)

        def codegen(context, builder, sig, args):
            aryty, idxty = sig.args[0], sig.args[1]
            ary = context.make_array(aryty)(context, builder, value=args[0])
            idx = context.cast(builder, args[1], idxty, types.int64)
            ptr = builder.gep(ary.data, [idx])
            i32 = ir.IntType(32)
            words = [context.cast(builder, args[k], sig.args[k], types.uint32) for k in range(2, 6)]
            fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32, i32])
            asm = ir.InlineAsm(fnty, "st.global.v4.u32 [$0], {$1,$2,$3,$4};", "l,r,r,r,r",
                               side_effect=True)
            builder.call(asm, [ptr] + words)
            return context.get_dummy_value()

        return sig, codegen

    @cuda.jit(device=True, inline="always")
    def shfl_idx_f32(v, src):
        return cuda.shfl_sync(0xFFFFFFFF, v, src)

else:  # ---------------------------------------------------------------- simulator twins
    def st_v4(arr, i, a, b, c, d):
        i = int(i)
        arr[i] = a
        arr[i + 1] = b
        arr[i + 2] = c
        arr[i + 3] = d

    _lock = threading.Lock()

    class _Warp:
        def __init__(self, parties: int):
            self.barrier = threading.Barrier(parties)
            self.box: list = [None] * 32

    def _exchange(value):
        th = threading.current_thread()
        mgr = th._manager
        bx, by, bz = mgr._block_dim
        tid = th.threadIdx.x + bx * (th.threadIdx.y + by * th.threadIdx.z)
        warp, lane = divmod(tid, 32)
        with _lock:
            warps = getattr(mgr, "_imp_ops_warps", None)
            if warps is None:
                warps = {}
                mgr._imp_ops_warps = warps
            w = warps.get(warp)
            if w is None:
                w = _Warp(min(32, bx * by * bz - 32 * warp))
                warps[warp] = w
        w.box[lane] = value
        w.barrier.wait()
        snap = list(w.box)
        w.barrier.wait()
        return snap

    def shfl_idx_f32(v, src):
        return np.float32(_exchange(np.float32(v))[int(src) & 31])


@device_jit(inline="always")
def warp_sum(v):
    v = np.float32(v)
    v += ptx.shfl_xor_f32(v, 16)
    v += ptx.shfl_xor_f32(v, 8)
    v += ptx.shfl_xor_f32(v, 4)
    v += ptx.shfl_xor_f32(v, 2)
    v += ptx.shfl_xor_f32(v, 1)
    return v


@device_jit(inline="always")
def block_sum(v, scratch):
    v = warp_sum(v)
    tid = cuda.threadIdx.x
    if (tid & 31) == 0:
        scratch[tid >> 5] = v
    cuda.syncthreads()
    s = np.float32(0.0)
    for w in range((cuda.blockDim.x + 31) >> 5):
        s += scratch[w]
    cuda.syncthreads()
    return s


@device_jit(inline="always")
def block_max(v, scratch):
    v = np.float32(v)
    v = max(v, ptx.shfl_xor_f32(v, 16))
    v = max(v, ptx.shfl_xor_f32(v, 8))
    v = max(v, ptx.shfl_xor_f32(v, 4))
    v = max(v, ptx.shfl_xor_f32(v, 2))
    v = max(v, ptx.shfl_xor_f32(v, 1))
    tid = cuda.threadIdx.x
    if (tid & 31) == 0:
        scratch[tid >> 5] = v
    cuda.syncthreads()
    s = scratch[0]
    for w in range(1, (cuda.blockDim.x + 31) >> 5):
        s = max(s, scratch[w])
    cuda.syncthreads()
    return s
