"""GGUF MoE GEMV for decode on the native blocks (Q8_0, Q4_K, Q6_K): top-k routed experts (+ an
optional shared expert) in two launches.

Layout: llama.cpp stores experts as 3-D tensors [E, N, K] whose raw bytes are E consecutive
row-major [N, K] matrices of ggml blocks. ``gate`` [E, I, H], ``up`` [E, I, H] and ``down``
[E, H, I] are separate ``(raw32, qtype)`` pairs (raw32 = ``gguf_common.gguf_device_buffer``), each
with its own type (a Q4_K_M mix has e.g. gate/up Q4_K, down Q6_K). The shared expert is
``(gate, up, down)`` pairs of 1-expert (dense) tensors with its own I_s (h is then
[M, S, max(I, I_s)]). K-quants need their K % 256 == 0, Q8_0 K % 32 == 0. ``topk_ids`` /
``topk_weights`` are read on the device: no host sync, no allocation, graph-capturable.

Same staging as ``gemv_gguf`` (one warp per weight row, spans of whole blocks copied with coalesced
16-byte loads into the warp's shared-memory slice, blocks decoded from there): the gate/up pass
calls gemv_gguf's lane decoders directly (bf16 x); the down pass uses fp32-activation twins built
on the same decoding helpers, so ``h`` stays fp32. The qtype is a runtime argument (one kernel per
launch covers every type mix; the branch is warp-uniform).
Launch 1 (grid ceil(max(I, I_s)/8) x M*S, 8 warps): warp w owns intermediate row ``8b + w`` of one
(token, slot) and streams the spans of its gate row then its up row (the next span's loads in
flight while the current one decodes); lane 0 writes ``act(gate) * up`` (SiLU / GELU-tanh) fp32.
Launch 2 (grid ceil(H/8) x M, 8 warps): warp w owns output row ``8b + w`` of token m and streams
the spans of that row in every slot's expert (prefetching across experts), summing
``coef_j * down_e(j)[n] . h[m, j]`` over the S slots (coef = topk weight, or
sigmoid(shared_gate_logit[m]) / 1 for the shared slot), then stores bf16/fp32 (+ fused residual).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from imp_kernels import ptx
from imp_kernels.compat import cuda
from imp_kernels.errors import KernelError
from imp_kernels.gemv_gguf import (SUPPORTED, _i8, _k4_scale_min, _q4_k_lane, _q6_k_lane, _q8_0_lane, _u2f,
                                   _MAGIC, _SM_WORDS, gguf_dequant)
from imp_kernels.gguf_common import span_load, span_store, warp_sum, word_at
from imp_kernels.launch import device_jit, jit, launch, require_aligned
from imp_kernels.mma_frag import store_out
from imp_kernels.moe_common import GELU_TANH, SILU, act as _act, check_out, check_residual, check_routing
from imp_kernels.moe_common import check_shared_logit, expert_id as _expert, logit_args, moe_ref_combine, out_args
from imp_kernels.moe_common import scratch_shape, warmup_moe
from imp_kernels.repack import GGUF_BLOCKS

__all__ = ["warmup", "moe_gguf", "moe_gguf_ref", "SILU", "GELU_TANH", "moe_gguf_scratch_shape", "SUPPORTED"]

ROWS = 8  # warps (= weight rows) per block
_QT = {q: i for i, q in enumerate(SUPPORTED)}  # Q8_0 -> 0, Q4_K -> 1, Q6_K -> 2
moe_gguf_scratch_shape = scratch_shape  # (m, topk, inter, shared_inter=None)


# ------------------------------------------------------------ fp32-activation lane decoders
@device_jit(inline="always")
def _f(hq, i):
    return ptx.bits_to_f32(hq[i])


@device_jit(inline="always")
def _q8_0_lane_f32(sm, warp, p, h32, base):
    d = ptx.f16_lo(np.uint32(int(word_at(sm, warp, p)) & 0xFFFF))
    s = np.float32(0.0)
    for j in range(8):
        w = word_at(sm, warp, p + 2 + 4 * j)
        hq = ptx.ld_v4_cached(h32, base + 4 * j)
        s += _i8(w, 0) * _f(hq, 0) + _i8(w, 8) * _f(hq, 1) + _i8(w, 16) * _f(hq, 2) + _i8(w, 24) * _f(hq, 3)
    return s * d


@device_jit(inline="always")
def _q4_half_f32(sm, warp, pq, nsh, h32, base):
    qs = np.float32(0.0)
    xs = np.float32(0.0)
    for j in range(8):
        wi = int(word_at(sm, warp, pq + 4 * j)) >> nsh
        hq = ptx.ld_v4_cached(h32, base + 4 * j)
        x0, x1, x2, x3 = _f(hq, 0), _f(hq, 1), _f(hq, 2), _f(hq, 3)
        qs += _u2f(wi & 15) * x0 + _u2f((wi >> 8) & 15) * x1 + _u2f((wi >> 16) & 15) * x2 \
            + _u2f((wi >> 24) & 15) * x3
        xs += (x0 + x1) + (x2 + x3)
    return qs, xs


@device_jit(inline="always")
def _q4_k_lane_f32(sm, warp, p, c, h32, base):
    w0 = word_at(sm, warp, p)
    d = ptx.f16_lo(w0)
    dmin = ptx.f16_hi(w0)
    s0 = word_at(sm, warp, p + 4)
    s1 = word_at(sm, warp, p + 8)
    s2 = word_at(sm, warp, p + 12)
    sc1, mn1 = _k4_scale_min(2 * c, s0, s1, s2)
    sc2, mn2 = _k4_scale_min(2 * c + 1, s0, s1, s2)
    q1, x1 = _q4_half_f32(sm, warp, p + 16 + 32 * c, 0, h32, base)
    q2, x2 = _q4_half_f32(sm, warp, p + 16 + 32 * c, 4, h32, base + 32)
    return d * (sc1 * q1 + sc2 * q2) - dmin * (mn1 * x1 + mn2 * x2)


@device_jit(inline="always")
def _q6_k_lane_f32(sm, warp, p, h, j, h32, base):
    pl = p + 64 * h + 32 * (j & 1)
    ph = p + 128 + 32 * h
    nsh = 4 * (j >> 1)
    hsh = 2 * j
    scw = int(word_at(sm, warp, p + 192 + 8 * h + 2 * j))
    sca = np.float32(((scw & 0xFF) ^ 0x80) - 128)
    scb = np.float32((((scw >> 8) & 0xFF) ^ 0x80) - 128)
    d = ptx.f16_lo(np.uint32(int(word_at(sm, warp, p + 208)) & 0xFFFF))
    sa = np.float32(0.0)
    sb = np.float32(0.0)
    off32 = _MAGIC + np.float32(32.0)
    for w in range(8):
        lw = int(word_at(sm, warp, pl + 4 * w))
        hw = int(word_at(sm, warp, ph + 4 * w))
        hq = ptx.ld_v4_cached(h32, base + 4 * w)
        t = np.float32(0.0)
        for b in range(4):
            q = ((lw >> (8 * b + nsh)) & 15) | (((hw >> (8 * b + hsh)) & 3) << 4)
            qf = ptx.bits_to_f32(np.uint32(0x4B000000 | q)) - off32
            t += qf * _f(hq, b)
        if w < 4:
            sa += t
        else:
            sb += t
    return d * (sca * sa + scb * sb)


# ---------------------------------------------------------------- span streams . activations
@device_jit(inline="always")
def _geom(qt):
    """(blocks per span, bytes per block, elements per block) of GGUF type id qt (gemv_gguf's spans)."""
    if qt == 0:
        return 32, 34, 32
    if qt == 1:
        return 8, 144, 256
    return 4, 210, 256


@device_jit(inline="always")
def _nspans(qt, k):
    spb, _, be = _geom(qt)
    nblk = k // be
    return (nblk + spb - 1) // spb


@device_jit(inline="always")
def _span_issue(raw32, start, qt, k, sp, lane):
    """Issue this lane's 16-byte loads of span ``sp`` of the row at byte ``start`` (K = k)."""
    spb, bb, be = _geom(qt)
    b0 = sp * spb
    return span_load(raw32, start + b0 * bb, min(spb, k // be - b0) * bb, lane)


@device_jit  # not force-inlined: compiled once per process (inlining it everywhere took minutes of NVVM)
def _span_part(sm, warp, lane, cur, qt, sp, k, xa, xrow, f32, xb):
    """This lane's partial dot of the staged span ``sp`` (at byte ``cur`` of the warp's smem slice)
    with bf16 x row ``xrow`` (f32 == 0, row stride k) or fp32 h words from ``xb`` (f32 == 1)."""
    spb, bb, be = _geom(qt)
    b0 = sp * spb
    nb = min(spb, k // be - b0)
    acc = np.float32(0.0)
    if qt == 0:  # Q8_0: one block per lane
        if lane < nb:
            col = (b0 + lane) * 32
            if f32:
                acc = _q8_0_lane_f32(sm, warp, cur + 34 * lane, xa, xb + col)
            else:
                acc = _q8_0_lane(sm, warp, cur + 34 * lane, xa, xrow, k, col)
    elif qt == 1:  # Q4_K: 4 lanes per super-block, one pair of sub-blocks each
        sb = lane >> 2
        c = lane & 3
        if sb < nb:
            col = (b0 + sb) * 256 + 64 * c
            if f32:
                acc = _q4_k_lane_f32(sm, warp, cur + 144 * sb, c, xa, xb + col)
            else:
                acc = _q4_k_lane(sm, warp, cur + 144 * sb, c, xa, xrow, k, col)
    else:  # Q6_K: 8 lanes per super-block, one (h, j) group of 32 each
        sb = lane >> 3
        hh = (lane & 7) >> 2
        jj = lane & 3
        if sb < nb:
            col = (b0 + sb) * 256 + 128 * hh + 32 * jj
            if f32:
                acc = _q6_k_lane_f32(sm, warp, cur + 210 * sb, hh, jj, xa, xb + col)
            else:
                acc = _q6_k_lane(sm, warp, cur + 210 * sb, hh, jj, xa, xrow, k, col)
    return acc


@jit
def _moe_gguf_gu_kernel(x32, hdim, ids, topk, e_count, g32, gqt, grb, u32, uqt, urb, inter,
                        sg32, sgqt, sgrb, su32, suqt, surb, sh_inter, n_slots, h_stride, act_kind, h):
    sm = cuda.shared.array((ROWS, _SM_WORDS), np.uint32)
    lane = cuda.threadIdx.x & 31
    warp = cuda.threadIdx.x >> 5
    slot = cuda.blockIdx.y
    m = slot // n_slots
    j = slot - m * n_slots
    i = cuda.blockIdx.x * ROWS + warp
    e = _expert(ids, m, j, topk, e_count)
    gb, gq, gr, ub, uq, ur, ni = g32, gqt, grb, u32, uqt, urb, inter
    if j >= topk:
        gb, gq, gr, ub, uq, ur, ni = sg32, sgqt, sgrb, su32, suqt, surb, sh_inter
    if i < ni:  # warp-uniform
        # one stream of spans: the gate row's, then the up row's; the next span's loads are in
        # flight while the current one is decoded
        gs = (e * ni + i) * gr
        us = (e * ni + i) * ur
        n_g = _nspans(gq, hdim)
        n_all = n_g + _nspans(uq, hdim)
        ag = np.float32(0.0)
        au = np.float32(0.0)
        q0, q1, q2, off = _span_issue(gb, gs, gq, hdim, 0, lane)
        for it in range(n_all):
            span_store(sm, warp, lane, q0, q1, q2)
            cur = off
            nx = it + 1
            if nx < n_g:
                q0, q1, q2, off = _span_issue(gb, gs, gq, hdim, nx, lane)
            elif nx < n_all:
                q0, q1, q2, off = _span_issue(ub, us, uq, hdim, nx - n_g, lane)
            ptx.syncwarp()
            if it < n_g:
                ag += _span_part(sm, warp, lane, cur, gq, it, hdim, x32, m, 0, 0)
            else:
                au += _span_part(sm, warp, lane, cur, uq, it - n_g, hdim, x32, m, 0, 0)
            ptx.syncwarp()
        gate = warp_sum(ag)
        up = warp_sum(au)
        if lane == 0:
            h[slot * h_stride + i] = _act(gate, act_kind) * up


@device_jit(inline="always")
def _dn_slot(ids, wts, topk, e_count, dqt, drb, inter, sdqt, sdrb, sh_inter, logit, has_logit, m, n, n_cols, j):
    """(qtype, K, row start byte, coef) of output row n in slot j."""
    e = _expert(ids, m, j, topk, e_count)
    if j < topk:
        return dqt, inter, (e * n_cols + n) * drb, np.float32(wts[m * topk + j])
    coef = np.float32(1.0)
    if has_logit:
        coef = np.float32(np.float32(1.0) / (np.float32(1.0) + math.exp(-logit[m])))
    return sdqt, sh_inter, n * sdrb, coef


@jit
def _moe_gguf_dn_kernel(h32, h_stride, ids, wts, topk, e_count, d32, dqt, drb, inter, sd32, sdqt, sdrb,
                        sh_inter, logit, has_logit, n_slots, out, n_cols, out_f32, res, has_res):
    sm = cuda.shared.array((ROWS, _SM_WORDS), np.uint32)
    lane = cuda.threadIdx.x & 31
    warp = cuda.threadIdx.x >> 5
    n = cuda.blockIdx.x * ROWS + warp
    m = cuda.blockIdx.y
    if n < n_cols:  # warp-uniform
        # one stream of spans over the slots' rows: the next span's loads (possibly the next
        # expert's) are in flight while the current one is decoded
        acc = np.float32(0.0)
        j = 0
        sp = 0
        q, k, start, coef = _dn_slot(ids, wts, topk, e_count, dqt, drb, inter, sdqt, sdrb, sh_inter, logit,
                                     has_logit, m, n, n_cols, 0)
        if topk > 0:
            q0, q1, q2, off = _span_issue(d32, start, q, k, 0, lane)
        else:
            q0, q1, q2, off = _span_issue(sd32, start, q, k, 0, lane)
        while j < n_slots:
            span_store(sm, warp, lane, q0, q1, q2)
            cur, cj, csp, cq, ck, ccoef = off, j, sp, q, k, coef
            sp += 1
            if sp >= _nspans(q, k):
                sp = 0
                j += 1
                if j < n_slots:
                    q, k, start, coef = _dn_slot(ids, wts, topk, e_count, dqt, drb, inter, sdqt, sdrb, sh_inter,
                                                 logit, has_logit, m, n, n_cols, j)
            if j < topk:
                q0, q1, q2, off = _span_issue(d32, start, q, k, sp, lane)
            elif j < n_slots:
                q0, q1, q2, off = _span_issue(sd32, start, q, k, sp, lane)
            ptx.syncwarp()
            acc += ccoef * _span_part(sm, warp, lane, cur, cq, csp, ck, h32, 0, 1, (m * n_slots + cj) * h_stride)
            ptx.syncwarp()
        acc = warp_sum(acc)
        if lane == 0:
            store_out(out, out_f32, res, has_res, m, n_cols, n, acc)


# ------------------------------------------------------------------------------------ wrappers
def _pair(t, what):
    if not (isinstance(t, (tuple, list)) and len(t) == 2 and isinstance(t[0], torch.Tensor)):
        raise KernelError(f"moe_gguf: {what} must be a (raw32, qtype) pair")
    raw, qt = t
    if qt not in _QT:
        raise KernelError(f"moe_gguf: {what} has GGUF type {qt!r}; supported {list(SUPPORTED)}")
    if raw.dtype != torch.int32 or raw.dim() != 1 or not raw.is_contiguous():
        raise KernelError(f"moe_gguf: {what} raw buffer must be gguf_device_buffer(raw) (1-D int32), "
                          f"got {raw.dtype} {list(raw.shape)}")
    return raw, qt


def _row_bytes(qt, k, what):
    elems, nbytes = GGUF_BLOCKS[qt]
    if k % elems:
        raise KernelError(f"moe_gguf: {what} is {qt} with K={k}, not a multiple of its block of {elems}")
    return k // elems * nbytes


def _need(raw, e, rows, rb, what):
    if raw.numel() * 4 < e * rows * rb + 16:
        raise KernelError(f"moe_gguf: {what} buffer holds {raw.numel() * 4} bytes, [{e}, {rows}] rows of {rb} "
                          f"bytes need {e * rows * rb + 16} (gguf_device_buffer pads 16)")


def _check(x, ids, wts, gate, up, down, out, h, shared, shared_gate_logit, residual, n_experts, inter,
           shared_inter):
    m, hdim = check_routing("moe_gguf", x, ids, wts)
    if h.dim() != 3 or h.dtype != torch.float32 or not h.is_contiguous():
        raise KernelError(f"moe_gguf: h scratch must be contiguous float32 [M, S, I], got {h.dtype} {list(h.shape)}")
    topk = ids.shape[1]
    inter = int(inter if inter is not None else h.shape[-1])
    g_raw, g_qt = _pair(gate, "gate")
    u_raw, u_qt = _pair(up, "up")
    d_raw, d_qt = _pair(down, "down")
    grb = _row_bytes(g_qt, hdim, "gate")
    urb = _row_bytes(u_qt, hdim, "up")
    drb = _row_bytes(d_qt, inter, "down")
    if n_experts is None:  # gguf_device_buffer: bytes in (n + 16, n + 32]
        n_experts = (d_raw.numel() * 4 - 16) // (hdim * drb)
    e = int(n_experts)
    if e < 1:
        raise KernelError("moe_gguf: n_experts must be >= 1")
    _need(g_raw, e, inter, grb, "gate")
    _need(u_raw, e, inter, urb, "up")
    _need(d_raw, e, hdim, drb, "down")
    sh = None
    sh_inter = 0
    if shared is not None:
        if not (isinstance(shared, (tuple, list)) and len(shared) == 3):
            raise KernelError("moe_gguf: shared must be (gate, up, down) (raw32, qtype) pairs")
        sg, su, sd = _pair(shared[0], "shared gate"), _pair(shared[1], "shared up"), _pair(shared[2], "shared down")
        sh_inter = int(shared_inter if shared_inter is not None else inter)
        sgrb = _row_bytes(sg[1], hdim, "shared gate")
        surb = _row_bytes(su[1], hdim, "shared up")
        sdrb = _row_bytes(sd[1], sh_inter, "shared down")
        _need(sg[0], 1, sh_inter, sgrb, "shared gate")
        _need(su[0], 1, sh_inter, surb, "shared up")
        _need(sd[0], 1, hdim, sdrb, "shared down")
        sh = (sg, su, sd, sgrb, surb, sdrb)
    check_shared_logit("moe_gguf", shared, shared_gate_logit, m)
    want_h = scratch_shape(m, topk, inter, sh_inter if shared is not None else None)
    if tuple(h.shape) != want_h:
        raise KernelError(f"moe_gguf: h scratch must be float32 {list(want_h)} (I={inter}"
                          f"{f', I_s={sh_inter}' if shared is not None else ''}), got {list(h.shape)}")
    check_out("moe_gguf", out, m, hdim)
    check_residual("moe_gguf", residual, out)
    return m, hdim, e, inter, sh_inter, topk, (g_raw, g_qt, grb), (u_raw, u_qt, urb), (d_raw, d_qt, drb), sh, want_h


def moe_gguf(x, topk_ids, topk_weights, gate, up, down, out, h, *, activation: int = SILU, shared=None,
             shared_gate_logit=None, residual=None, n_experts=None, inter=None, shared_inter=None) -> None:
    """``out[m] = sum_j w[m,j] * down_e(act(gate_e x) * up_e x) (+ sigmoid(l[m]) * shared) (+ res)``.

    gate / up ([E, I, H]) and down ([E, H, I]): (gguf_device_buffer raw32, qtype) pairs; shared:
    optional (gate, up, down) pairs of 1-expert tensors. I defaults to ``h.shape[-1]`` (pass
    ``inter`` / ``shared_inter`` when the shared expert's I_s differs from I), E to what the down
    buffer holds. h: fp32 scratch of ``moe_gguf_scratch_shape``. No allocation, no host sync."""
    (m, hdim, e_count, inter, sh_inter, topk, (g_raw, g_qt, grb), (u_raw, u_qt, urb), (d_raw, d_qt, drb), sh,
     (_, n_slots, h_stride)) = _check(x, topk_ids, topk_weights, gate, up, down, out, h, shared, shared_gate_logit,
                                      residual, n_experts, inter, shared_inter)
    if sh is not None:
        (sg_raw, sg_qt), (su_raw, su_qt), (sd_raw, sd_qt), sgrb, surb, sdrb = sh
    else:  # dummies: never read
        sg_raw, sg_qt, su_raw, su_qt, sd_raw, sd_qt, sgrb, surb, sdrb = (g_raw, g_qt, u_raw, u_qt, d_raw, d_qt,
                                                                          grb, urb, drb)
    require_aligned("moe_gguf", x, h, g_raw, u_raw, d_raw, sg_raw, su_raw, sd_raw)
    launch(_moe_gguf_gu_kernel, (-(-max(inter, sh_inter) // ROWS), m * n_slots), 32 * ROWS,
           x.view(torch.int32).reshape(-1), hdim, topk_ids.reshape(-1), topk, e_count,
           g_raw, _QT[g_qt], grb, u_raw, _QT[u_qt], urb, inter,
           sg_raw, _QT[sg_qt], sgrb, su_raw, _QT[su_qt], surb, sh_inter, n_slots, h_stride, int(activation),
           h.reshape(-1))
    launch(_moe_gguf_dn_kernel, (-(-hdim // ROWS), m), 32 * ROWS,
           h.view(torch.int32).reshape(-1), h_stride, topk_ids.reshape(-1), topk_weights.reshape(-1), topk,
           e_count, d_raw, _QT[d_qt], drb, inter, sd_raw, _QT[sd_qt], sdrb, sh_inter,
           *logit_args(shared_gate_logit, topk_weights), n_slots, *out_args(out, hdim, residual))


def moe_gguf_ref(x, topk_ids, topk_weights, gate, up, down, out, h, *, activation: int = SILU, shared=None,
                 shared_gate_logit=None, residual=None, n_experts=None, inter=None, shared_inter=None) -> None:
    """Torch reference of ``moe_gguf`` (same arguments; fills ``h`` too): ``gguf_dequant``, fp32 math."""
    (m, hdim, e_count, inter, sh_inter, topk, (g_raw, g_qt, grb), (u_raw, u_qt, urb), (d_raw, d_qt, drb), sh,
     _) = _check(x, topk_ids, topk_weights, gate, up, down, out, h, shared, shared_gate_logit, residual,
                 n_experts, inter, shared_inter)

    def mat(raw, qt, e, rows, cols, rb):
        b = raw.view(torch.uint8)[e * rows * rb:(e + 1) * rows * rb]
        return gguf_dequant(b, qt, rows, cols)

    def experts(j, e):
        if j is None:
            (sg_raw, sg_qt), (su_raw, su_qt), (sd_raw, sd_qt), sgrb, surb, sdrb = sh
            return (torch.cat([mat(sg_raw, sg_qt, 0, sh_inter, hdim, sgrb), mat(su_raw, su_qt, 0, sh_inter, hdim, surb)]),
                    mat(sd_raw, sd_qt, 0, hdim, sh_inter, sdrb))
        return (torch.cat([mat(g_raw, g_qt, e, inter, hdim, grb), mat(u_raw, u_qt, e, inter, hdim, urb)]),
                mat(d_raw, d_qt, e, hdim, inter, drb))

    moe_ref_combine(x, topk_ids, topk_weights, experts, out, h, activation, shared_gate_logit, residual)


def warmup(device="cuda") -> None:
    """Compile and load both kernels for the specialisations real calls use (int32/int64 ids,
    bf16/fp32 out, +-residual, +-shared; the GGUF types are runtime arguments)."""
    from imp_kernels.gguf_common import gguf_device_buffer

    e, inter, hdim = 2, 32, 32
    _, nb = GGUF_BLOCKS["Q8_0"]
    gu = (gguf_device_buffer(torch.zeros(e * inter * nb, dtype=torch.uint8, device=device)), "Q8_0")
    dn = (gguf_device_buffer(torch.zeros(e * hdim * nb, dtype=torch.uint8, device=device)), "Q8_0")
    warmup_moe(moe_gguf, (gu, gu, dn), hdim, inter, shared=(gu, gu, dn), device=device, n_experts=e)
