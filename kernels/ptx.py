"""Hopper device intrinsics as inline PTX, each with a pure-Python twin for the CUDA simulator.

Numba exposes no 16-byte loads, no tensor-core ``mma.sync``, no fp8/f16x2 conversions. These
``@intrinsic`` functions emit one PTX instruction (or a short fixed sequence) each; under the
simulator (``SIMULATOR``) the same names are plain Python functions with the same results, so
kernels can be tested on CPU. Warp-collective ones (``mma_*``, ``shfl_xor_f32``) are emulated in
the simulator with a per-warp barrier: every lane of the warp must call them the same number of
times (which the hardware requires anyway).

Words are ``uint32``. An "f16x2" word holds two IEEE halves: element 0 in the low 16 bits.

Loads (``arr`` a 1-D C-contiguous uint32/int32 array, ``i`` an element index):
  ``ld_v4(arr, i)`` -> 4 words from ``arr[i:i+4]`` (16-byte ``ld.global.nc.L1::no_allocate``;
  ``i`` must be a multiple of 4 and the array 16-byte aligned; for streamed weights);
  ``ld_v4_cached`` the same but allocating in L1 (activations reused by many blocks);
  ``ld_v2(arr, i)`` -> 2 words; ``ld_u16(arr, i)`` -> one 16-bit element of a uint16/int16
  array, zero-extended (no negative-index wraparound code, unlike ``arr[i]``).
Tensor cores (``mma.sync.aligned.m16n8k16.row.col``, fp32 accumulate), fragment layout with
lane = 4*g + t: A regs (row g, k 2t..2t+1), (row g+8, k 2t..), (row g, k 2t+8..), (row g+8,
k 2t+8..); B regs (k 2t..2t+1, col g), (k 2t+8..2t+9, col g); C/D (row g, cols 2t, 2t+1),
(row g+8, cols 2t, 2t+1):
  ``mma_f16(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)`` and ``mma_bf16(...)`` -> 4 float32.
Conversions: ``cvt_f16x2_e4m3x2(w)`` (low 16 bits = two e4m3 bytes, byte 0 -> element 0),
  ``cvt_f16x2_f32(hi, lo)``, ``f16_lo(w)`` / ``f16_hi(w)`` -> float32, ``hmul2(a, b)``,
  ``hsub2(a, b)``, ``hfma2(a, b, c)`` (a*b+c rounded once), ``bits_to_f32(u)``, ``f32_to_bits(f)``, ``cvt_bf16_f32(f)`` (round to nearest
  even, returns the 16 bits in a uint32), ``prmt(a, b, sel)``.
Warp: ``shfl_xor_f32(v, lanemask)`` (full-warp butterfly exchange), ``syncwarp()``.
"""

from __future__ import annotations

import threading

import numpy as np

from imp_kernels.compat import SIMULATOR, cuda

__all__ = [
    "ld_v4", "ld_v4_cached", "ld_v2", "ld_u16", "mma_f16", "mma_bf16", "cvt_f16x2_e4m3x2", "cvt_f16x2_f32", "f16_lo",
    "f16_hi", "hmul2", "hsub2", "hfma2", "bits_to_f32", "f32_to_bits", "cvt_bf16_f32", "prmt",
    "shfl_xor_f32", "syncwarp",
]

if not SIMULATOR:
    from llvmlite import ir
    from numba import types
    from numba.cuda.extending import intrinsic

    _i32 = ir.IntType(32)
    _f32 = ir.FloatType()

    def _elem_ptr(context, builder, aryty, ary, idxty, idx):
        arr = context.make_array(aryty)(context, builder, value=ary)
        i64 = context.cast(builder, idx, idxty, types.int64)
        return builder.gep(arr.data, [i64])

    def _asm(builder, ret, args, text, constraints):
        fnty = ir.FunctionType(ret, [a.type for a in args])
        return builder.call(ir.InlineAsm(fnty, text, constraints), args)

    def _check_words(arr):
        if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype in (types.uint32, types.int32)):
            raise TypeError(f"expected a 1-D uint32/int32 array, got {arr}")

    @intrinsic
    def ld_v4(typingctx, arr, i):
        _check_words(arr)
        sig = types.UniTuple(types.uint32, 4)(arr, i)

        def codegen(context, builder, sig, args):
            ptr = _elem_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
            r = _asm(builder, ir.LiteralStructType([_i32] * 4), [ptr],
                     "ld.global.nc.L1::no_allocate.v4.u32 {$0,$1,$2,$3}, [$4];",
                     "=r,=r,=r,=r,l")
            vals = [builder.extract_value(r, k) for k in range(4)]
            return context.make_tuple(builder, sig.return_type, vals)

        return sig, codegen

    @intrinsic
    def ld_v4_cached(typingctx, arr, i):
        _check_words(arr)
        sig = types.UniTuple(types.uint32, 4)(arr, i)

        def codegen(context, builder, sig, args):
            ptr = _elem_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
            r = _asm(builder, ir.LiteralStructType([_i32] * 4), [ptr],
                     "ld.global.nc.v4.u32 {$0,$1,$2,$3}, [$4];", "=r,=r,=r,=r,l")
            vals = [builder.extract_value(r, k) for k in range(4)]
            return context.make_tuple(builder, sig.return_type, vals)

        return sig, codegen

    @intrinsic
    def ld_v2(typingctx, arr, i):
        _check_words(arr)
        sig = types.UniTuple(types.uint32, 2)(arr, i)

        def codegen(context, builder, sig, args):
            ptr = _elem_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
            r = _asm(builder, ir.LiteralStructType([_i32] * 2), [ptr],
                     "ld.global.nc.L1::no_allocate.v2.u32 {$0,$1}, [$2];", "=r,=r,l")
            vals = [builder.extract_value(r, k) for k in range(2)]
            return context.make_tuple(builder, sig.return_type, vals)

        return sig, codegen

    @intrinsic
    def ld_u16(typingctx, arr, i):
        if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype in (types.uint16, types.int16)):
            raise TypeError(f"expected a 1-D uint16/int16 array, got {arr}")
        sig = types.uint32(arr, i)

        def codegen(context, builder, sig, args):
            ptr = _elem_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
            return _asm(builder, _i32, [ptr], "ld.global.nc.u16 $0, [$1];", "=r,l")

        return sig, codegen

    def _make_mma(kind):
        text = (f"mma.sync.aligned.m16n8k16.row.col.f32.{kind}.{kind}.f32 "
                "{$0,$1,$2,$3}, {$4,$5,$6,$7}, {$8,$9}, {$10,$11,$12,$13};")

        @intrinsic
        def mma(typingctx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
            sig = types.UniTuple(types.float32, 4)(*([types.uint32] * 6 + [types.float32] * 4))

            def codegen(context, builder, sig, args):
                r = _asm(builder, ir.LiteralStructType([_f32] * 4), list(args), text,
                         "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f")
                vals = [builder.extract_value(r, k) for k in range(4)]
                return context.make_tuple(builder, sig.return_type, vals)

            return sig, codegen

        return mma

    mma_f16 = _make_mma("f16")
    mma_bf16 = _make_mma("bf16")

    def _unary(ret_t, arg_t, text, constraints):
        ret_ir = _f32 if ret_t == types.float32 else _i32

        @intrinsic
        def fn(typingctx, a):
            sig = ret_t(arg_t)

            def codegen(context, builder, sig, args):
                return _asm(builder, ret_ir, [args[0]], text, constraints)

            return sig, codegen

        return fn

    def _binary(text):
        @intrinsic
        def fn(typingctx, a, b):
            sig = types.uint32(types.uint32, types.uint32)

            def codegen(context, builder, sig, args):
                return _asm(builder, _i32, list(args), text, "=r,r,r")

            return sig, codegen

        return fn

    cvt_f16x2_e4m3x2 = _unary(types.uint32, types.uint32,
                              "{.reg .b16 t; cvt.u16.u32 t, $1; cvt.rn.f16x2.e4m3x2 $0, t;}", "=r,r")
    f16_lo = _unary(types.float32, types.uint32,
                    "{.reg .f16 l, h; mov.b32 {l, h}, $1; cvt.f32.f16 $0, l;}", "=f,r")
    f16_hi = _unary(types.float32, types.uint32,
                    "{.reg .f16 l, h; mov.b32 {l, h}, $1; cvt.f32.f16 $0, h;}", "=f,r")
    bits_to_f32 = _unary(types.float32, types.uint32, "mov.b32 $0, $1;", "=f,r")
    f32_to_bits = _unary(types.uint32, types.float32, "mov.b32 $0, $1;", "=r,f")
    cvt_bf16_f32 = _unary(types.uint32, types.float32,
                          "{.reg .b16 t; cvt.rn.bf16.f32 t, $1; cvt.u32.u16 $0, t;}", "=r,f")
    hmul2 = _binary("mul.rn.f16x2 $0, $1, $2;")
    hsub2 = _binary("sub.rn.f16x2 $0, $1, $2;")

    @intrinsic
    def hfma2(typingctx, a, b, c):
        sig = types.uint32(types.uint32, types.uint32, types.uint32)

        def codegen(context, builder, sig, args):
            return _asm(builder, _i32, list(args), "fma.rn.f16x2 $0, $1, $2, $3;", "=r,r,r,r")

        return sig, codegen

    @intrinsic
    def cvt_f16x2_f32(typingctx, hi, lo):
        sig = types.uint32(types.float32, types.float32)

        def codegen(context, builder, sig, args):
            return _asm(builder, _i32, list(args), "cvt.rn.f16x2.f32 $0, $1, $2;", "=r,f,f")

        return sig, codegen

    @intrinsic
    def prmt(typingctx, a, b, sel):
        sig = types.uint32(types.uint32, types.uint32, types.uint32)

        def codegen(context, builder, sig, args):
            return _asm(builder, _i32, list(args), "prmt.b32 $0, $1, $2, $3;", "=r,r,r,r")

        return sig, codegen

    @cuda.jit(device=True, inline="always")
    def shfl_xor_f32(v, lanemask):
        return cuda.shfl_xor_sync(0xFFFFFFFF, v, lanemask)

    @cuda.jit(device=True, inline="always")
    def syncwarp():
        cuda.syncwarp(0xFFFFFFFF)

else:  # ---------------------------------------------------------------- simulator twins
    _U32 = np.uint32

    def _u32(v) -> np.uint32:
        return _U32(int(v) & 0xFFFFFFFF)

    def _halves(w) -> tuple[np.float32, np.float32]:
        h = np.array([int(w) & 0xFFFF, (int(w) >> 16) & 0xFFFF], dtype=np.uint16).view(np.float16)
        return np.float32(h[0]), np.float32(h[1])

    def _pack_f16(lo, hi) -> np.uint32:
        b = np.array([lo, hi], dtype=np.float32).astype(np.float16).view(np.uint16)
        return _U32(int(b[0]) | (int(b[1]) << 16))

    def _bf16_halves(w) -> tuple[np.float32, np.float32]:
        lo = np.array([(int(w) & 0xFFFF) << 16], dtype=np.uint32).view(np.float32)[0]
        hi = np.array([int(w) & 0xFFFF0000], dtype=np.uint32).view(np.float32)[0]
        return np.float32(lo), np.float32(hi)

    def ld_v4(arr, i):
        i = int(i)
        return (_u32(arr[i]), _u32(arr[i + 1]), _u32(arr[i + 2]), _u32(arr[i + 3]))

    ld_v4_cached = ld_v4

    def ld_u16(arr, i):
        return _U32(int(arr[int(i)]) & 0xFFFF)

    def ld_v2(arr, i):
        i = int(i)
        return (_u32(arr[i]), _u32(arr[i + 1]))

    # --- warp-collective emulation: a barrier and a mailbox per (block, warp)
    _reg_lock = threading.Lock()

    class _Warp:
        def __init__(self, parties: int):
            self.barrier = threading.Barrier(parties)
            self.box: list = [None] * 32

    def _warp_ctx():
        th = threading.current_thread()
        mgr = th._manager  # numba simulator BlockThread
        bx, by, bz = mgr._block_dim
        tid = th.threadIdx.x + bx * (th.threadIdx.y + by * th.threadIdx.z)
        warp, lane = divmod(tid, 32)
        with _reg_lock:
            warps = getattr(mgr, "_imp_warps", None)
            if warps is None:
                warps = {}
                mgr._imp_warps = warps
            w = warps.get(warp)
            if w is None:
                parties = min(32, bx * by * bz - 32 * warp)
                w = _Warp(parties)
                warps[warp] = w
        return w, lane

    def _exchange(value):
        """Every lane posts ``value``; returns the list of all lanes' values."""
        w, lane = _warp_ctx()
        w.box[lane] = value
        w.barrier.wait()
        snapshot = list(w.box)
        w.barrier.wait()
        return snapshot, lane

    def _mma(halves, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        frags, lane = _exchange((a0, a1, a2, a3, b0, b1))
        g, t = divmod(lane, 4)
        a_rows = {g: np.zeros(16), g + 8: np.zeros(16)}
        for tt in range(4):
            fa = frags[4 * g + tt]
            for reg, (row, k) in enumerate(((g, 2 * tt), (g + 8, 2 * tt), (g, 2 * tt + 8), (g + 8, 2 * tt + 8))):
                lo, hi = halves(fa[reg])
                a_rows[row][k], a_rows[row][k + 1] = lo, hi
        b_cols = {}
        for n in (2 * t, 2 * t + 1):
            col = np.zeros(16)
            for tt in range(4):
                fb = frags[4 * n + tt]
                lo, hi = halves(fb[4])
                col[2 * tt], col[2 * tt + 1] = lo, hi
                lo, hi = halves(fb[5])
                col[2 * tt + 8], col[2 * tt + 9] = lo, hi
            b_cols[n] = col
        d0 = np.float32(float(a_rows[g] @ b_cols[2 * t]) + float(c0))
        d1 = np.float32(float(a_rows[g] @ b_cols[2 * t + 1]) + float(c1))
        d2 = np.float32(float(a_rows[g + 8] @ b_cols[2 * t]) + float(c2))
        d3 = np.float32(float(a_rows[g + 8] @ b_cols[2 * t + 1]) + float(c3))
        return (d0, d1, d2, d3)

    def mma_f16(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        return _mma(_halves, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)

    def mma_bf16(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        return _mma(_bf16_halves, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)

    def shfl_xor_f32(v, lanemask):
        vals, lane = _exchange(np.float32(v))
        return vals[lane ^ int(lanemask)]

    def syncwarp():
        _exchange(None)

    _E4M3 = None

    def _e4m3_table() -> np.ndarray:
        global _E4M3
        if _E4M3 is None:
            b = np.arange(256)
            s = np.where(b & 0x80, -1.0, 1.0)
            e = (b >> 3) & 0xF
            m = b & 7
            v = np.where(e == 0, m * 2.0 ** -9, (1 + m / 8.0) * 2.0 ** (e - 7.0)) * s
            v[(b & 0x7F) == 0x7F] = np.nan
            _E4M3 = v.astype(np.float32)
        return _E4M3

    def cvt_f16x2_e4m3x2(w):
        t = _e4m3_table()
        return _pack_f16(t[int(w) & 0xFF], t[(int(w) >> 8) & 0xFF])

    def cvt_f16x2_f32(hi, lo):
        return _pack_f16(lo, hi)

    def f16_lo(w):
        return _halves(w)[0]

    def f16_hi(w):
        return _halves(w)[1]

    def hmul2(a, b):
        al, ah = _halves(a)
        bl, bh = _halves(b)
        return _pack_f16(al * bl, ah * bh)

    def hsub2(a, b):
        al, ah = _halves(a)
        bl, bh = _halves(b)
        return _pack_f16(al - bl, ah - bh)

    def hfma2(a, b, c):
        al, ah = _halves(a)
        bl, bh = _halves(b)
        cl, ch = _halves(c)
        # the f16 product is exact in float64 and so is the sum here; one rounding to f16, as fma
        h = np.array([np.float64(al) * np.float64(bl) + np.float64(cl),
                      np.float64(ah) * np.float64(bh) + np.float64(ch)]).astype(np.float16).view(np.uint16)
        return _U32(int(h[0]) | (int(h[1]) << 16))

    def bits_to_f32(u):
        return np.array([int(u) & 0xFFFFFFFF], dtype=np.uint32).view(np.float32)[0]

    def f32_to_bits(f):
        return _U32(np.array([f], dtype=np.float32).view(np.uint32)[0])

    def cvt_bf16_f32(f):
        u = int(np.array([f], dtype=np.float32).view(np.uint32)[0])
        if (u & 0x7F800000) == 0x7F800000 and (u & 0x007FFFFF):
            return _U32(((u >> 16) | 0x40) & 0xFFFF)  # quiet NaN
        u += 0x7FFF + ((u >> 16) & 1)
        return _U32((u >> 16) & 0xFFFF)

    def prmt(a, b, sel):
        src = int(a) | (int(b) << 32)
        out = 0
        for k in range(4):
            s = (int(sel) >> (4 * k)) & 0xF
            byte = (src >> (8 * (s & 7))) & 0xFF
            if s & 8:
                byte = 0xFF if byte & 0x80 else 0
            out |= byte << (8 * k)
        return _U32(out)
