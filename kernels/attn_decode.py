"""Decode attention (one query token) over a bf16 KV cache on the tensor cores, split-K.

``attn_decode(q, k_cache, v_cache, slot_pos, pos, out, scale=..., window=None, ring=False,
gate=None, plan=None)``: q [B, H, D], caches [B, Hkv, S, D] (the engine's KV-cache layout),
``slot_pos`` [S] int64 (the position slot s holds, -1 = empty; positions below 2^31), ``pos`` a
[1] int64 device tensor. Key slot s is visible iff ``0 <= slot_pos[s] <= pos`` and, with a window W,
``slot_pos[s] > pos - W``. GQA: query head h reads kv head h // (H/Hkv), group sizes 1..8; D a
multiple of 64 (128/256/512). ``gate`` [B, H*D] bf16 applies Qwen's output gate
``out = bf16(out · bf16(sigmoid(gate)))``.

Kernel 1 (grid splits x Hkv x B; D/64 warps): a block owns one kv head, all the query heads of
its group (K/V are read once per group), and a range of 16-key tiles of the live slots (``S``
for a ring, ``min(S, pos+1)`` otherwise, from ``pos - W + 1`` with a window W over a non-ring
cache; ``pos`` read on the device); warp w owns dims [64w, 64w+64). Per tile: scores
``S = Q·Kᵀ`` with ``mma m16n8k16`` (A = the group's <= 8 query heads as rows, B = 8 keys),
partial over the warp's dims, summed across warps through shared memory; online softmax in fp32
per head; then ``Oᵀ += Vᵀ·Pᵀ`` with A = V transposed in registers (16-byte loads of 4 key rows
and ``prmt``) and B = the probabilities as bf16 (the score C-fragment is exactly the B-fragment
layout). The next tile's K, V and slot positions are loaded before the current tile is used, so
the masks cost no round trip of their own. With one split it writes ``out`` directly; otherwise
each block stores its fp32 partial (unnormalised O of the group's heads with 16-byte stores,
running max and sum) in ``plan``'s workspace and kernel 2 merges them.

Kernel 2 (grid column-chunks x Hkv x B, 256 threads): 16 threads per chunk of 16 four-dim
columns of the group's outputs, 16 split groups; each thread loads its splits' partials four at
a time (all loads of a batch in flight together), folds them with log-sum-exp weights, and the
16 split groups are folded through shared memory; then the gate. Its cost is one or two L2 round
trips whatever the split count, so the default split count (``default_splits``) can fill the
GPU with about 16 warps per SM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from imp_kernels import ptx
from imp_kernels.compat import cuda
from imp_kernels.launch import device_jit, jit, launch
from imp_kernels.ops_common import (NEG_INF, bf16_round, check, ld_bf16, pack_bf16, shfl_idx_f32, st_bf16, st_v4, u32,
                                    want)

__all__ = ["attn_decode", "attn_decode_ref", "attention_torch", "attn_decode_plan", "AttnDecodePlan",
           "default_splits"]

MAX_WARPS = 8  # D <= 512
MAX_REP = 8
MERGE_COLS = 16  # four-dim output columns per merge block (x 16 split groups = 256 threads)
MERGE_THREADS = 256


@device_jit(inline="always")
def _load_tile(k32, v32, sp32, row0, tile, cap, dw, w, g, t):
    """K words of keys 16*tile + g and + 8 + g (dims 64w + 16t.. +16), V words of keys
    16*tile + {2t, 2t+1, 2t+8, 2t+9} (dims 64w + 8g.. +8) and the low words of those four keys'
    slot positions; key indices clamped into the cache."""
    last = cap - 1
    key0 = min(tile * 16 + g, last)
    key1 = min(tile * 16 + 8 + g, last)
    kb0 = (row0 + key0) * dw + 32 * w + 8 * t
    kb1 = (row0 + key1) * dw + 32 * w + 8 * t
    ka = (ptx.ld_v4(k32, kb0), ptx.ld_v4(k32, kb0 + 4))
    kb = (ptx.ld_v4(k32, kb1), ptx.ld_v4(k32, kb1 + 4))
    vo = 32 * w + 4 * g
    r = tile * 16 + 2 * t
    r0 = min(r, last)
    r1 = min(r + 1, last)
    r2 = min(r + 8, last)
    r3 = min(r + 9, last)
    va = ptx.ld_v4(v32, (row0 + r0) * dw + vo)
    vb = ptx.ld_v4(v32, (row0 + r1) * dw + vo)
    vc = ptx.ld_v4(v32, (row0 + r2) * dw + vo)
    vd = ptx.ld_v4(v32, (row0 + r3) * dw + vo)
    sp = (np.int32(sp32[2 * r0]), np.int32(sp32[2 * r1]), np.int32(sp32[2 * r2]), np.int32(sp32[2 * r3]))
    return ka, kb, va, vb, vc, vd, sp


@device_jit(inline="always")
def _masked(x, key, n_act, sp, pos, window):
    if key >= n_act or sp < 0 or sp > pos or (window > 0 and sp <= pos - window):
        return NEG_INF
    return x


@device_jit(inline="always")
def _store_out(out, gate, has_gate, b, n_heads, d, h0, hh, n_rep, dim, val):
    if hh < n_rep:
        i = (b * n_heads + h0 + hh) * d + dim
        o = bf16_round(val)
        if has_gate:
            o = o * bf16_round(np.float32(1.0) / (np.float32(1.0) + np.float32(math.exp(-ld_bf16(gate, i)))))
        st_bf16(out, i, o)


@device_jit(inline="always")
def _bits(f):
    return ptx.f32_to_bits(np.float32(f))


@jit(max_registers=128)  # 4 blocks of 4 warps (16 warps) per SM at D=256
def _attn_partial_kernel(q32, k32, v32, sp32, pos_arr, n_heads, n_kv, cap, d, n_rep, scale, window,
                         ring, nsplit, part32, part_ml, direct, out, gate, has_gate):
    sc = cuda.shared.array((2, MAX_WARPS, 4, 32), np.float32)
    lane = cuda.threadIdx.x & 31
    w = cuda.threadIdx.x >> 5
    nw = cuda.blockDim.x >> 5
    g = lane >> 2
    t = lane & 3
    split = cuda.blockIdx.x
    kvh = cuda.blockIdx.y
    b = cuda.blockIdx.z
    dw = d >> 1  # words per row
    z = np.uint32(0)
    # Q fragments: head g of the group, dims 64w + 16t .. +16 (two 16-byte loads, before pos is known)
    q0, q1, q2, q3, q4, q5, q6, q7 = z, z, z, z, z, z, z, z
    if g < n_rep:
        qb = (b * n_heads + kvh * n_rep + g) * dw + 32 * w + 8 * t
        qa = ptx.ld_v4_cached(q32, qb)
        qc = ptx.ld_v4_cached(q32, qb + 4)
        q0, q1, q2, q3 = qa[0], qa[1], qa[2], qa[3]
        q4, q5, q6, q7 = qc[0], qc[1], qc[2], qc[3]
    pos = pos_arr[0]
    n_act = cap if ring else min(cap, pos + 1)
    # a window over a non-ring cache (slot = position): slots before pos - W + 1 are all masked
    first = max(0, pos + 1 - window) >> 4 if window > 0 and not ring else 0
    tiles = ((n_act + 15) >> 4) - first
    per = (tiles + nsplit - 1) // nsplit
    t0 = first + split * per
    t1 = min(t0 + per, first + tiles)
    row0 = (b * n_kv + kvh) * cap
    acc = cuda.local.array(16, np.float32)
    for i in range(16):
        acc[i] = np.float32(0.0)
    m_run = NEG_INF
    l_run = np.float32(0.0)
    # prefetch the first tile
    tile = t0
    if tile < t1:
        ka, kb2, va, vb, vc, vd, sp = _load_tile(k32, v32, sp32, row0, tile, cap, dw, w, g, t)
    else:
        zz = (z, z, z, z)
        m1 = np.int32(-1)
        ka, kb2, va, vb, vc, vd, sp = (zz, zz), (zz, zz), zz, zz, zz, zz, (m1, m1, m1, m1)
    buf = 0
    while tile < t1:
        nxt = tile + 1
        if nxt < t1:
            nka, nkb, nva, nvb, nvc, nvd, nsp = _load_tile(k32, v32, sp32, row0, nxt, cap, dw, w, g, t)
        else:
            nka, nkb, nva, nvb, nvc, nvd, nsp = ka, kb2, va, vb, vc, vd, sp
        # partial scores over this warp's 64 dims: keys 8n + g of the tile (n = 0, 1)
        f = np.float32(0.0)
        s00, s01, j0, j1 = f, f, f, f
        s10, s11, j2, j3 = f, f, f, f
        s00, s01, j0, j1 = ptx.mma_bf16(q0, z, q1, z, ka[0][0], ka[0][1], s00, s01, j0, j1)
        s00, s01, j0, j1 = ptx.mma_bf16(q2, z, q3, z, ka[0][2], ka[0][3], s00, s01, j0, j1)
        s00, s01, j0, j1 = ptx.mma_bf16(q4, z, q5, z, ka[1][0], ka[1][1], s00, s01, j0, j1)
        s00, s01, j0, j1 = ptx.mma_bf16(q6, z, q7, z, ka[1][2], ka[1][3], s00, s01, j0, j1)
        s10, s11, j2, j3 = ptx.mma_bf16(q0, z, q1, z, kb2[0][0], kb2[0][1], s10, s11, j2, j3)
        s10, s11, j2, j3 = ptx.mma_bf16(q2, z, q3, z, kb2[0][2], kb2[0][3], s10, s11, j2, j3)
        s10, s11, j2, j3 = ptx.mma_bf16(q4, z, q5, z, kb2[1][0], kb2[1][1], s10, s11, j2, j3)
        s10, s11, j2, j3 = ptx.mma_bf16(q6, z, q7, z, kb2[1][2], kb2[1][3], s10, s11, j2, j3)
        sc[buf, w, 0, lane] = s00
        sc[buf, w, 1, lane] = s01
        sc[buf, w, 2, lane] = s10
        sc[buf, w, 3, lane] = s11
        cuda.syncthreads()
        x0, x1, x2, x3 = sc[buf, 0, 0, lane], sc[buf, 0, 1, lane], sc[buf, 0, 2, lane], sc[buf, 0, 3, lane]
        for ww in range(1, nw):
            x0 += sc[buf, ww, 0, lane]
            x1 += sc[buf, ww, 1, lane]
            x2 += sc[buf, ww, 2, lane]
            x3 += sc[buf, ww, 3, lane]
        buf ^= 1
        # keys of this lane's four scores: tile*16 + {2t, 2t+1, 8+2t, 9+2t}
        kbase = tile * 16 + 2 * t
        x0 = _masked(x0 * scale, kbase, n_act, sp[0], pos, window)
        x1 = _masked(x1 * scale, kbase + 1, n_act, sp[1], pos, window)
        x2 = _masked(x2 * scale, kbase + 8, n_act, sp[2], pos, window)
        x3 = _masked(x3 * scale, kbase + 9, n_act, sp[3], pos, window)
        mt = max(max(x0, x1), max(x2, x3))
        mt = max(mt, ptx.shfl_xor_f32(mt, 1))
        mt = max(mt, ptx.shfl_xor_f32(mt, 2))
        m_new = max(m_run, mt)
        if m_new == NEG_INF:
            alpha = np.float32(1.0)
            p0, p1, p2, p3 = f, f, f, f
        else:
            alpha = np.float32(math.exp(m_run - m_new))
            p0 = bf16_round(math.exp(x0 - m_new))
            p1 = bf16_round(math.exp(x1 - m_new))
            p2 = bf16_round(math.exp(x2 - m_new))
            p3 = bf16_round(math.exp(x3 - m_new))
        m_run = m_new
        l_run = l_run * alpha + ((p0 + p1) + (p2 + p3))
        # accumulator columns are heads 2t and 2t+1: fetch their rescale factors
        al_a = shfl_idx_f32(alpha, 8 * t)
        al_b = shfl_idx_f32(alpha, 8 * t + 4)
        pb0 = pack_bf16(p0, p1)
        pb1 = pack_bf16(p2, p3)
        for j in range(4):
            sel = 0x5410 if (j & 1) == 0 else 0x7632
            h = j >> 1
            a0 = ptx.prmt(va[h], vb[h], sel)
            a1 = ptx.prmt(va[2 + h], vb[2 + h], sel)
            a2 = ptx.prmt(vc[h], vd[h], sel)
            a3 = ptx.prmt(vc[2 + h], vd[2 + h], sel)
            c0, c1, c2, c3 = ptx.mma_bf16(a0, a1, a2, a3, pb0, pb1, acc[4 * j] * al_a, acc[4 * j + 1] * al_b,
                                          acc[4 * j + 2] * al_a, acc[4 * j + 3] * al_b)
            acc[4 * j] = c0
            acc[4 * j + 1] = c1
            acc[4 * j + 2] = c2
            acc[4 * j + 3] = c3
        ka, kb2, va, vb, vc, vd, sp = nka, nkb, nva, nvb, nvc, nvd, nsp
        tile = nxt
    l_run += ptx.shfl_xor_f32(l_run, 1)
    l_run += ptx.shfl_xor_f32(l_run, 2)
    ha = 2 * t
    hb = 2 * t + 1
    if direct:
        inv = np.float32(1.0) / l_run if l_run > 0 else np.float32(0.0)
        inv_a = shfl_idx_f32(inv, 8 * t)
        inv_b = shfl_idx_f32(inv, 8 * t + 4)
        for j in range(4):
            d0 = 64 * w + 8 * g + j
            _store_out(out, gate, has_gate, b, n_heads, d, kvh * n_rep, ha, n_rep, d0, acc[4 * j] * inv_a)
            _store_out(out, gate, has_gate, b, n_heads, d, kvh * n_rep, hb, n_rep, d0, acc[4 * j + 1] * inv_b)
            _store_out(out, gate, has_gate, b, n_heads, d, kvh * n_rep, ha, n_rep, d0 + 4, acc[4 * j + 2] * inv_a)
            _store_out(out, gate, has_gate, b, n_heads, d, kvh * n_rep, hb, n_rep, d0 + 4, acc[4 * j + 3] * inv_b)
    else:
        # this lane holds dims 64w + 8g .. +8 of heads 2t and 2t+1: two 16-byte stores per head
        pb = ((b * n_kv + kvh) * nsplit + split) * MAX_REP
        if t == 0 and w == 0 and g < n_rep:
            part_ml[(pb + g) * 2] = m_run
            part_ml[(pb + g) * 2 + 1] = l_run
        dbase = 64 * w + 8 * g
        if ha < n_rep:
            o = (pb + ha) * d + dbase
            st_v4(part32, o, _bits(acc[0]), _bits(acc[4]), _bits(acc[8]), _bits(acc[12]))
            st_v4(part32, o + 4, _bits(acc[2]), _bits(acc[6]), _bits(acc[10]), _bits(acc[14]))
        if hb < n_rep:
            o = (pb + hb) * d + dbase
            st_v4(part32, o, _bits(acc[1]), _bits(acc[5]), _bits(acc[9]), _bits(acc[13]))
            st_v4(part32, o + 4, _bits(acc[3]), _bits(acc[7]), _bits(acc[11]), _bits(acc[15]))


@device_jit(inline="always")
def _split_index(s, nsplit):
    return min(s, nsplit - 1)


@jit
def _attn_merge_kernel(part32, part_ml, n_heads, n_kv, n_rep, d, nsplit, out, gate, has_gate):
    sm_m = cuda.shared.array(MERGE_THREADS, np.float32)
    sm_l = cuda.shared.array(MERGE_THREADS, np.float32)
    sm_o = cuda.shared.array((4, MERGE_THREADS), np.float32)
    tid = cuda.threadIdx.x
    col = tid % MERGE_COLS
    sg = tid // MERGE_COLS
    ngrp = MERGE_THREADS // MERGE_COLS
    kvh = cuda.blockIdx.y
    b = cuda.blockIdx.z
    d4 = d >> 2
    c = cuda.blockIdx.x * MERGE_COLS + col  # four-dim column of the group's n_rep x D outputs
    active = c < n_rep * d4
    cc = c if active else 0
    hh = cc // d4
    dim = (cc - hh * d4) * 4
    base = (b * n_kv + kvh) * nsplit
    m_loc = NEG_INF
    l_loc = np.float32(0.0)
    o0, o1, o2, o3 = np.float32(0.0), np.float32(0.0), np.float32(0.0), np.float32(0.0)
    s = sg
    while s < nsplit:
        # four splits per round, every load issued before any is used (indices past the end
        # re-read the last split and are given weight 0)
        ia = ((base + _split_index(s, nsplit)) * MAX_REP + hh)
        ib = ((base + _split_index(s + ngrp, nsplit)) * MAX_REP + hh)
        ic = ((base + _split_index(s + 2 * ngrp, nsplit)) * MAX_REP + hh)
        i_d = ((base + _split_index(s + 3 * ngrp, nsplit)) * MAX_REP + hh)
        wa = ptx.ld_v4(part32, ia * d + dim)
        wb = ptx.ld_v4(part32, ib * d + dim)
        wc = ptx.ld_v4(part32, ic * d + dim)
        wd = ptx.ld_v4(part32, i_d * d + dim)
        ma, la = part_ml[ia * 2], part_ml[ia * 2 + 1]
        mb, lb = part_ml[ib * 2], part_ml[ib * 2 + 1]
        mc, lc = part_ml[ic * 2], part_ml[ic * 2 + 1]
        md, ld = part_ml[i_d * 2], part_ml[i_d * 2 + 1]
        if s + ngrp >= nsplit:
            mb = NEG_INF
        if s + 2 * ngrp >= nsplit:
            mc = NEG_INF
        if s + 3 * ngrp >= nsplit:
            md = NEG_INF
        m_new = max(max(m_loc, ma), max(mb, max(mc, md)))
        if m_new != NEG_INF:
            r = np.float32(math.exp(m_loc - m_new))
            ea = np.float32(math.exp(ma - m_new))
            eb = np.float32(math.exp(mb - m_new))
            ec = np.float32(math.exp(mc - m_new))
            ed = np.float32(math.exp(md - m_new))
            l_loc = l_loc * r + ((ea * la + eb * lb) + (ec * lc + ed * ld))
            o0 = o0 * r + ((ea * ptx.bits_to_f32(wa[0]) + eb * ptx.bits_to_f32(wb[0]))
                           + (ec * ptx.bits_to_f32(wc[0]) + ed * ptx.bits_to_f32(wd[0])))
            o1 = o1 * r + ((ea * ptx.bits_to_f32(wa[1]) + eb * ptx.bits_to_f32(wb[1]))
                           + (ec * ptx.bits_to_f32(wc[1]) + ed * ptx.bits_to_f32(wd[1])))
            o2 = o2 * r + ((ea * ptx.bits_to_f32(wa[2]) + eb * ptx.bits_to_f32(wb[2]))
                           + (ec * ptx.bits_to_f32(wc[2]) + ed * ptx.bits_to_f32(wd[2])))
            o3 = o3 * r + ((ea * ptx.bits_to_f32(wa[3]) + eb * ptx.bits_to_f32(wb[3]))
                           + (ec * ptx.bits_to_f32(wc[3]) + ed * ptx.bits_to_f32(wd[3])))
            m_loc = m_new
        s += 4 * ngrp
    sm_m[tid] = m_loc
    sm_l[tid] = l_loc
    sm_o[0, tid] = o0
    sm_o[1, tid] = o1
    sm_o[2, tid] = o2
    sm_o[3, tid] = o3
    cuda.syncthreads()
    if sg == 0 and active:
        big = NEG_INF
        for k in range(ngrp):
            big = max(big, sm_m[k * MERGE_COLS + col])
        tot = np.float32(0.0)
        r0, r1, r2, r3 = np.float32(0.0), np.float32(0.0), np.float32(0.0), np.float32(0.0)
        if big != NEG_INF:
            for k in range(ngrp):
                i = k * MERGE_COLS + col
                mk = sm_m[i]
                if mk != NEG_INF:
                    e = np.float32(math.exp(mk - big))
                    tot += e * sm_l[i]
                    r0 += e * sm_o[0, i]
                    r1 += e * sm_o[1, i]
                    r2 += e * sm_o[2, i]
                    r3 += e * sm_o[3, i]
        inv = np.float32(1.0) / tot if tot > 0 else np.float32(0.0)
        h0 = kvh * n_rep
        _store_out(out, gate, has_gate, b, n_heads, d, h0, hh, n_rep, dim, r0 * inv)
        _store_out(out, gate, has_gate, b, n_heads, d, h0, hh, n_rep, dim + 1, r1 * inv)
        _store_out(out, gate, has_gate, b, n_heads, d, h0, hh, n_rep, dim + 2, r2 * inv)
        _store_out(out, gate, has_gate, b, n_heads, d, h0, hh, n_rep, dim + 3, r3 * inv)


@dataclass
class AttnDecodePlan:
    """Split count and fp32 workspace for one (batch, kv heads, head_dim, capacity) shape;
    allocate once (``attn_decode_plan``) and reuse every step (graph-safe)."""

    splits: int
    part_o: torch.Tensor | None  # [B, Hkv, splits, 8, D]
    part_ml: torch.Tensor | None  # [B, Hkv, splits, 8, 2] (running max, sum)


def default_splits(batch: int, n_kv: int, head_dim: int, capacity: int, *, sms: int = 132,
                   min_tiles: int = 2) -> int:
    """Splits of the context per kv head: enough blocks for about 16 warps per SM (the most that
    fit at <= 128 registers), each with at least ``min_tiles`` 16-key tiles (a block's partial
    costs n_rep·D·4 bytes against its 64·D bytes of K and V per tile), and no split left empty
    at full capacity."""
    warps = head_dim // 64
    want_blocks = max(1, sms * max(1, 16 // warps))
    splits = -(-want_blocks // max(1, batch * n_kv))
    tiles = -(-capacity // 16)
    per = max(min_tiles, -(-tiles // splits))
    return max(1, -(-tiles // per))


def _sm_count(device) -> int:
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(dev).multi_processor_count
    return 132


def attn_decode_plan(batch: int, n_kv: int, head_dim: int, capacity: int, device, *,
                     splits: int | None = None) -> AttnDecodePlan:
    """Choose the split count (``default_splits`` for the device's SM count unless given) and
    allocate its workspace."""
    s = splits or default_splits(batch, n_kv, head_dim, capacity, sms=_sm_count(device))
    if s == 1:
        return AttnDecodePlan(1, None, None)
    po = torch.empty(batch, n_kv, s, MAX_REP, head_dim, dtype=torch.float32, device=device)
    pm = torch.empty(batch, n_kv, s, MAX_REP, 2, dtype=torch.float32, device=device)
    return AttnDecodePlan(s, po, pm)


def _check(q, k_cache, v_cache, slot_pos, pos, out, gate, plan):
    kn = "attn_decode"
    check(q.dim() == 3 and q.dtype == torch.bfloat16 and q.is_contiguous(),
          f"{kn}: q must be contiguous bf16 [B, H, D], got {q.dtype} {list(q.shape)}")
    b, h, d = q.shape
    check(d % 64 == 0 and d <= 64 * MAX_WARPS, f"{kn}: head_dim {d} must be a multiple of 64 up to 512")
    check(k_cache.dim() == 4 and k_cache.shape[0] == b and k_cache.shape[3] == d,
          f"{kn}: k_cache must be [B={b}, Hkv, S, D={d}], got {list(k_cache.shape)}")
    hkv, s = k_cache.shape[1], k_cache.shape[2]
    check(h % hkv == 0 and 1 <= h // hkv <= MAX_REP, f"{kn}: H={h} must be 1..8 times Hkv={hkv}")
    want(k_cache, "k_cache", kn, torch.bfloat16, (b, hkv, s, d))
    want(v_cache, "v_cache", kn, torch.bfloat16, (b, hkv, s, d))
    want(slot_pos, "slot_pos", kn, torch.int64, (s,))
    want(pos, "pos", kn, torch.int64, (1,))
    want(out, "out", kn, torch.bfloat16, (b, h, d))
    if gate is not None:
        want(gate, "gate", kn, torch.bfloat16, (b, h * d))
    if plan is not None and plan.splits > 1:
        want(plan.part_o, "plan.part_o", kn, torch.float32, (b, hkv, plan.splits, MAX_REP, d))
        want(plan.part_ml, "plan.part_ml", kn, torch.float32, (b, hkv, plan.splits, MAX_REP, 2))
    return b, h, hkv, s, d


def attn_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_pos: torch.Tensor,
                pos: torch.Tensor, out: torch.Tensor, *, scale: float, window: int | None = None,
                ring: bool = False, gate: torch.Tensor | None = None,
                plan: AttnDecodePlan | None = None) -> None:
    """One-token attention over the cache into ``out`` [B, H, D] (see module doc). ``plan``
    None means one split (no workspace). No allocation, no host sync."""
    b, h, hkv, s, d = _check(q, k_cache, v_cache, slot_pos, pos, out, gate, plan)
    splits = plan.splits if plan is not None else 1
    direct = splits == 1
    ob = out.view(torch.uint16).reshape(-1)
    gb = gate.view(torch.uint16).reshape(-1) if gate is not None else ob
    sp32 = slot_pos.view(torch.int32)  # low words of the int64 positions (little-endian)
    pw = u32(plan.part_o) if not direct else u32(pos)  # pos: placeholder when there is no workspace
    pm = plan.part_ml.reshape(-1) if not direct else pos.view(torch.float32)
    launch(_attn_partial_kernel, (splits, hkv, b), 32 * (d // 64), u32(q), u32(k_cache), u32(v_cache),
           sp32, pos, h, hkv, s, d, h // hkv, np.float32(scale), int(window or 0), int(ring), splits,
           pw, pm, int(direct), ob, gb, int(gate is not None))
    if not direct:
        n_rep = h // hkv
        chunks = -(-(n_rep * d // 4) // MERGE_COLS)
        launch(_attn_merge_kernel, (chunks, hkv, b), MERGE_THREADS, pw, pm, h, hkv, n_rep, d, splits, ob, gb,
               int(gate is not None))


def attention_torch(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_pos: torch.Tensor,
                    pos: torch.Tensor, *, scale: float, window: int | None = None,
                    sdpa: bool = False) -> torch.Tensor:
    """One query token's attention in torch, in q's dtype: q [B, H, D], caches [B, Hkv, S, D] ->
    [B, H, D], with the visibility rule of the module doc (query head h reads kv head
    h // (H/Hkv)). Eager (default), as transformers' eager attention: scores in q's dtype, masked
    with the dtype's minimum, softmax in fp32, probabilities cast back to q's dtype, then ·V.
    ``sdpa=True``: torch's fused ``scaled_dot_product_attention`` with the same boolean mask."""
    n_rep = q.shape[1] // k_cache.shape[1]
    k = k_cache.repeat_interleave(n_rep, dim=1) if n_rep > 1 else k_cache
    v = v_cache.repeat_interleave(n_rep, dim=1) if n_rep > 1 else v_cache
    kp, qp = slot_pos[None, :], pos[:, None]
    mask = (kp >= 0) & (kp <= qp)  # [1, S]
    if window is not None:
        mask = mask & (kp > qp - window)
    qq = q[:, :, None]
    if sdpa:
        return F.scaled_dot_product_attention(qq, k, v, attn_mask=mask, scale=scale)[:, :, 0]
    scores = torch.matmul(qq, k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v)[:, :, 0]


def attn_decode_ref(q, k_cache, v_cache, slot_pos, pos, out, *, scale, window=None, ring=False, gate=None,
                    plan=None) -> None:
    """Torch reference of ``attn_decode`` (same arguments): ``attention_torch`` (eager: bf16
    scores, fp32 softmax, bf16 probabilities), then the gate in bf16."""
    b, h, hkv, s, d = _check(q, k_cache, v_cache, slot_pos, pos, out, gate, plan)
    o = attention_torch(q, k_cache, v_cache, slot_pos, pos, scale=scale, window=window)
    if gate is not None:
        o = o * torch.sigmoid(gate.view(b, h, d))
    out.copy_(o)


def kernel_sigs(T) -> dict:
    """Argument types of the kernels as the wrapper launches them (for imp_kernels.bench.ptx_report)."""
    part = (T.U32, T.U32, T.U32, T.I32, T.I64, T.I, T.I, T.I, T.I, T.I, T.F, T.I, T.I, T.I, T.U32, T.F32A, T.I,
            T.U16, T.U16, T.I)
    merge = (T.U32, T.F32A, T.I, T.I, T.I, T.I, T.I, T.U16, T.U16, T.I)
    return {"attn_partial": (_attn_partial_kernel, part), "attn_merge": (_attn_merge_kernel, merge)}
