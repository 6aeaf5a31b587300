"""Block-wide exact top-k selection by radix select over shared-memory keys (device functions).

Keys are order-preserving uint32 images of float32 values (``f32_key``; larger key = larger
float, -inf included; NaN is not given a meaning). Ties are broken toward the lower token id:
the selection is the k largest of (key, -id), which is unique, so exactly ``min(n, k)`` elements
are chosen and the result does not depend on thread timing.

``radix_select(keys, ids, id_base, n, k, hist, st)``: every thread of the block calls it; the
elements are ``keys[0:n]`` with ids ``ids[i]`` (or ``id_base + i`` when ``id_base >= 0``, so a
contiguous chunk needs no id array). Up to four 8-bit passes over the key decide the k-th key T;
only if more elements equal T than are needed do up to three more passes over the inverted id
(24 bits) decide which of them are taken. The outcome is left in ``st`` (uint32 shared [8]) and
tested per element with ``selected(key, id, st)``. ``hist`` is an int32 shared [256].
"""

from __future__ import annotations

import numpy as np

from imp_kernels import ptx
from imp_kernels.compat import cuda
from imp_kernels.launch import device_jit
from imp_kernels.ops_common import shfl_idx_f32

__all__ = ["f32_key", "key_f32", "radix_select", "selected", "ID_BITS"]

ID_BITS = 24
ID_MASK = (1 << ID_BITS) - 1
# st slots
_T, _IV, _MODE, _MASK, _KK, _IVMASK = 0, 1, 2, 3, 4, 5
# modes: 0 take everything, 1 key >= T, 2 key > T or (key == T and inverted id >= IV)


@device_jit(inline="always")
def f32_key(x):
    b = int(ptx.f32_to_bits(np.float32(x)))
    return np.uint32((b ^ 0xFFFFFFFF) if (b & 0x80000000) else (b | 0x80000000))


@device_jit(inline="always")
def key_f32(k):
    k = int(k)
    return ptx.bits_to_f32(np.uint32((k & 0x7FFFFFFF) if (k & 0x80000000) else (k ^ 0xFFFFFFFF)))


@device_jit(inline="always")
def _elem_id(ids, id_base, i):
    return id_base + i if id_base >= 0 else int(ids[i])


@device_jit(inline="always")
def selected(key, eid, st):
    mode = st[_MODE]
    if mode == 0:
        return True
    t = st[_T]
    if key > t:
        return True
    if key < t:
        return False
    if mode == 1:
        return True
    return np.uint32(ID_MASK - eid) >= st[_IV]


@device_jit(inline="always")
def _scan_step(v, lane, d):
    y = shfl_idx_f32(v, (lane - d) & 31)
    return v + y if lane >= d else v


@device_jit(inline="always")
def _find_digit(hist, st, shift, is_id_pass):
    """Warp 0: the bin holding the kk-th largest element; narrows the prefix in ``st``."""
    lane = cuda.threadIdx.x & 31
    kk = np.float32(st[_KK])
    cnt = np.float32(0.0)
    for j in range(8):
        cnt += np.float32(hist[255 - 8 * lane - j])
    incl = _scan_step(cnt, lane, 1)
    incl = _scan_step(incl, lane, 2)
    incl = _scan_step(incl, lane, 4)
    incl = _scan_step(incl, lane, 8)
    incl = _scan_step(incl, lane, 16)
    excl = incl - cnt
    if excl < kk and kk <= incl:
        run = excl
        for j in range(8):
            b = 255 - 8 * lane - j
            c = np.float32(hist[b])
            if run + c >= kk and run < kk:
                rest = np.uint32(kk - run)
                if is_id_pass:
                    st[_IV] = st[_IV] | np.uint32(b << shift)
                    st[_IVMASK] = st[_IVMASK] | np.uint32(255 << shift)
                else:
                    st[_T] = st[_T] | np.uint32(b << shift)
                    st[_MASK] = st[_MASK] | np.uint32(255 << shift)
                    if shift == 0:  # T fully known: are all of its ties needed?
                        st[_MODE] = np.uint32(1) if rest == np.uint32(c) else np.uint32(2)
                st[_KK] = rest
            run += c


@device_jit(inline="always")
def radix_select(keys, ids, id_base, n, k, hist, st):
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    if tid == 0:
        st[_T] = np.uint32(0)
        st[_IV] = np.uint32(0)
        st[_MASK] = np.uint32(0)
        st[_IVMASK] = np.uint32(0)
        st[_KK] = np.uint32(k)
        st[_MODE] = np.uint32(0) if n <= k else np.uint32(1)
    cuda.syncthreads()
    if n <= k:
        return
    for p in range(7):
        if p >= 4 and st[_MODE] != 2:
            break
        h = tid
        while h < 256:
            hist[h] = 0
            h += nt
        cuda.syncthreads()
        if p < 4:
            shift = 24 - 8 * p
            prefix = st[_T]
            mask = st[_MASK]
            i = tid
            while i < n:
                key = keys[i]
                if (key & mask) == prefix:
                    cuda.atomic.add(hist, (int(key) >> shift) & 255, 1)
                i += nt
        else:
            shift = 16 - 8 * (p - 4)
            t = st[_T]
            prefix = st[_IV]
            mask = st[_IVMASK]
            i = tid
            while i < n:
                if keys[i] == t:
                    iv = np.uint32(ID_MASK - _elem_id(ids, id_base, i))
                    if (iv & mask) == prefix:
                        cuda.atomic.add(hist, (int(iv) >> shift) & 255, 1)
                i += nt
        cuda.syncthreads()
        if tid < 32:
            _find_digit(hist, st, shift, p >= 4)
        cuda.syncthreads()
