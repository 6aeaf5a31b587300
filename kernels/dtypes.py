"""Scalar number-format device functions (GPU and CUDA simulator alike).

All take or return raw bits held in integers, because numba has no bf16/fp8/fp4 array types:
bf16 and f16 tensors reach kernels as uint16 bit views (``launch.as_device_array``), fp8 as uint8.

* ``bf16_bits_to_f32(b)``: bf16 bits (uint16 or int16) -> float32 (exact).
* ``f32_to_bf16_bits(f)``: float32 -> bf16 bits as uint32, round to nearest even, NaN stays NaN.
* ``f16_bits_to_f32(h)``: IEEE half bits -> float32 (exact; GGUF block scales).
* ``e4m3_to_f32(byte)``: float8_e4m3fn bits -> float32 (exact; 0x7F/0xFF are NaN).
* ``e2m1_to_f32(nibble)``: FP4 E2M1 code (low 4 bits) -> float32 (exact).

On the GPU each is one or two PTX instructions (``imp_kernels.ptx``; e4m3 uses the sm_89+
``cvt.rn.f16x2.e4m3x2``); under the simulator the ``ptx`` twins compute the same values in numpy.
Pass integers through ``int()`` or ``np.uint32()`` before shifting in kernel code: numpy (the
simulator) keeps a uint16 a uint16 under ``<<`` while numba widens it, so ``int(b) << 16`` is the
spelling that means the same thing in both.
"""

from __future__ import annotations

import numpy as np

from imp_kernels import ptx
from imp_kernels.launch import device_jit

__all__ = ["bf16_bits_to_f32", "f32_to_bf16_bits", "f16_bits_to_f32", "e4m3_to_f32", "e2m1_to_f32"]


@device_jit(inline="always")
def bf16_bits_to_f32(b):
    return ptx.bits_to_f32(np.uint32((int(b) & 0xFFFF) << 16))


@device_jit(inline="always")
def f32_to_bf16_bits(f):
    return ptx.cvt_bf16_f32(np.float32(f))


@device_jit(inline="always")
def f16_bits_to_f32(h):
    return ptx.f16_lo(np.uint32(int(h) & 0xFFFF))


@device_jit(inline="always")
def e4m3_to_f32(byte):
    return ptx.f16_lo(ptx.cvt_f16x2_e4m3x2(np.uint32(int(byte) & 0xFF)))


@device_jit(inline="always")
def e2m1_to_f32(nibble):
    n = int(nibble)
    # E2M1 magnitude bits placed at f16 bits 9..11 form the f16 value E2M1 * 2^-14 exactly
    # (E2M1's e=0 codes land on f16 subnormals, which have the same spacing).
    h = np.uint32(((n & 7) << 9) | ((n & 8) << 12))
    return ptx.f16_lo(h) * np.float32(16384.0)
