"""FP8 (e4m3) MoE GEMV for decode: top-k routed experts (+ an optional shared expert) in two launches.

Layout: expert stacks of ``repack.fp8_tile`` tiles (``fp8_experts_tile``): gate_up codes int32
[E, NTg, KCg, 32, 4] of the fused [2I, H] matrix (rows 0..I-1 gate, I..2I-1 up), down codes int32
[E, NTd, KCd, 32, 4] of [H, I]. A 16-row x 32-column tile is 512 bytes: lane ``4g + t`` holds rows
g, g+8 x columns 8t..8t+7 in one 16-byte load. Needs I % 16 == 0 (then NTg * 16 == 2I exactly and
a 16-row tile never straddles gate/up or a 128-row scale block) and H % 8 == 0.
Scales (float32, per expert, multiplied): per-tensor [E] (gate_up also [E, 2] = gate, up),
per-channel [E, N], or 128x128 blocks [E, ceil(N/128), ceil(K/128)] (HF ``weight_scale_inv``; for
gate_up also [E, 2 * ceil(I/128), ceil(H/128)] = gate and up blocked separately, as when the
checkpoint's gate_proj / up_proj scales are concatenated). The shared expert is
``(gu_codes [1, ...], gu_scale, dn_codes [1, ...], dn_scale)`` with its own granularity and its own
I_s (h is then [M, S, max(I, I_s)]). topk ids/weights are read on the device: no host sync, no
allocation, graph-capturable.

CUDA-core fp32 math: ``cvt.rn.f16x2.e4m3x2`` (exact), fp32 products and sums, so activations are
used in fp32 (x bf16 and h fp32 are never rounded to f16).
Launch 1 (grid max(I, I_s)/16 x M*S): a block takes gate tile b and up tile b + I/16 of one
(token, slot) pair; its warps split the 32-column chunks (a 128-block scale applied per chunk),
lanes reduce over t with shuffles, warps through shared memory, and 16 threads write
``act(gate) * up`` (SiLU / GELU-tanh) in fp32 to ``h``: the activation is fused.
Launch 2 (grid H/16 x M): a block takes 16 output rows of one token; warps take (slot, chunk) items
and add ``coef * scale * (w . h)`` (coef = topk weight, or sigmoid(shared_gate_logit[m]) / 1 for
the shared slot); 16 threads store bf16/fp32 out (+ fused residual).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from imp_kernels import ptx
from imp_kernels.compat import cuda
from imp_kernels.errors import KernelError
from imp_kernels.gemv_fp8 import fp8_dequant
from imp_kernels.launch import block_warps, compiled_regs, device_jit, jit, launch, require_aligned
from imp_kernels.mma_frag import store_out
from imp_kernels.moe_common import GELU_TANH, SILU, act as _act, check_h, check_out, check_residual, check_routing
from imp_kernels.moe_common import check_shared_logit, expert_id as _expert, logit_args, moe_ref_combine
from imp_kernels.moe_common import out_args, scratch_shape, warmup_moe
from imp_kernels.repack import fp8_tile, fp8_untile

__all__ = ["warmup", "moe_fp8", "moe_fp8_ref", "fp8_experts_tile", "SILU", "GELU_TANH", "moe_fp8_scratch_shape"]

MAX_WARPS = 16
PER_TENSOR, PER_CHANNEL, BLOCK128 = 0, 1, 2
moe_fp8_scratch_shape = scratch_shape  # (m, topk, inter, shared_inter=None)


def fp8_experts_tile(weights: torch.Tensor) -> torch.Tensor:
    """e4m3 expert weights [E, N, K] (float8_e4m3fn or uint8 bits) -> int32 [E, NT, KC, 32, 4]
    (``repack.fp8_tile`` per expert, stacked; NT even, K padded to 32 with zeros)."""
    if not isinstance(weights, torch.Tensor) or weights.dim() != 3 \
            or weights.dtype not in (torch.float8_e4m3fn, torch.uint8):
        raise KernelError("fp8_experts_tile: weights must be float8_e4m3fn or uint8 [E, N, K], got "
                          f"{getattr(weights, 'dtype', type(weights))} {list(getattr(weights, 'shape', []))}")
    return torch.stack([fp8_tile(weights[e]) for e in range(weights.shape[0])]).contiguous()


@device_jit(inline="always")
def _e4m3x4(w):
    """4 e4m3 bytes of a word -> 4 float32 (exact)."""
    lo = ptx.cvt_f16x2_e4m3x2(np.uint32(int(w) & 0xFFFF))
    hi = ptx.cvt_f16x2_e4m3x2(np.uint32((int(w) >> 16) & 0xFFFF))
    return ptx.f16_lo(lo), ptx.f16_hi(lo), ptx.f16_lo(hi), ptx.f16_hi(hi)


@device_jit(inline="always")
def _tile_dots(w4, x0, x1, x2, x3, x4, x5, x6, x7):
    """One lane's 16-byte tile word quad . 8 activations -> (row g, row g+8) partial dots."""
    a0, a1, a2, a3 = _e4m3x4(w4[0])
    b0, b1, b2, b3 = _e4m3x4(w4[1])
    c0, c1, c2, c3 = _e4m3x4(w4[2])
    d0, d1, d2, d3 = _e4m3x4(w4[3])
    rg = (a0 * x0 + a1 * x1 + a2 * x2 + a3 * x3) + (c0 * x4 + c1 * x5 + c2 * x6 + c3 * x7)
    rg8 = (b0 * x0 + b1 * x1 + b2 * x2 + b3 * x3) + (d0 * x4 + d1 * x5 + d2 * x6 + d3 * x7)
    return rg, rg8


@device_jit(inline="always")
def _scale(sc, mode, e, pair, pidx, n_rows, row, rb_total, rblk, kb_total, kc):
    """The multiplier of weight row ``row`` (of n_rows) of expert e in 32-column chunk kc."""
    if mode == 0:
        return sc[e * pair + pidx]
    if mode == 1:
        return sc[e * n_rows + row]
    return sc[(e * rb_total + rblk) * kb_total + (kc >> 2)]


@device_jit(inline="always")
def _tsum(v):
    """Sum over the 4 lanes t of a lane group g."""
    v += ptx.shfl_xor_f32(v, 1)
    v += ptx.shfl_xor_f32(v, 2)
    return v


@device_jit(inline="always")
def _bf16x4(w0, w1):
    return (ptx.bits_to_f32(np.uint32((int(w0) & 0xFFFF) << 16)), ptx.bits_to_f32(np.uint32(int(w0) & 0xFFFF0000)),
            ptx.bits_to_f32(np.uint32((int(w1) & 0xFFFF) << 16)), ptx.bits_to_f32(np.uint32(int(w1) & 0xFFFF0000)))


@device_jit(inline="always")
def _load_gu(cw, ebase, ti_g, ti_u, kc_total, lane, kc, x32, m, hdim, t):
    """Gate tile word quad, up tile word quad and 8 bf16 x of chunk kc (zeros past the end)."""
    zw = np.uint32(0)
    wa, wb, xa = (zw, zw, zw, zw), (zw, zw, zw, zw), (zw, zw, zw, zw)
    if kc < kc_total:
        wa = ptx.ld_v4(cw, ebase + ((ti_g * kc_total + kc) * 32 + lane) * 4)
        wb = ptx.ld_v4(cw, ebase + ((ti_u * kc_total + kc) * 32 + lane) * 4)
        col = kc * 32 + 8 * t
        if col < hdim:
            xa = ptx.ld_v4_cached(x32, (m * hdim + col) >> 1)
    return wa, wb, xa


@jit
def _moe_fp8_gu_kernel(x32, hdim, ids, topk, e_count, codes, sc, mode, pair, rb_total, kb_total, up_sub,
                       up_add, nt_total, inter, sh_codes, sh_sc, sh_mode, sh_pair, sh_rb_total, sh_up_sub,
                       sh_up_add, sh_nt_total, sh_inter, kc_total, n_slots, h_stride, act_kind, h):
    red = cuda.shared.array((MAX_WARPS, 32), np.float32)
    tid = cuda.threadIdx.x
    lane = tid & 31
    warp = tid >> 5
    nwarps = cuda.blockDim.x >> 5
    g = lane >> 2
    t = lane & 3
    ti_g = cuda.blockIdx.x
    slot = cuda.blockIdx.y
    m = slot // n_slots
    j = slot - m * n_slots
    e = _expert(ids, m, j, topk, e_count)
    cw, cs, md, pr, rbt, us, ua, ntt, ni = codes, sc, mode, pair, rb_total, up_sub, up_add, nt_total, inter
    if j >= topk:
        cw, cs, md, pr, rbt, us, ua, ntt, ni = (sh_codes, sh_sc, sh_mode, sh_pair, sh_rb_total, sh_up_sub,
                                                sh_up_add, sh_nt_total, sh_inter)
    if ti_g * 16 >= ni:  # block-uniform, before any barrier
        return
    ti_u = ti_g + (ni >> 4)
    ebase = e * ntt * kc_total * 128
    rblk_g = (ti_g * 16) >> 7
    rblk_u = ((ti_g * 16 + us) >> 7) + ua
    z = np.float32(0.0)
    ag, ag8, au, au8 = z, z, z, z
    kc = warp  # software pipeline two chunks deep
    wa, wb, xa = _load_gu(cw, ebase, ti_g, ti_u, kc_total, lane, kc, x32, m, hdim, t)
    pa, pb, px = _load_gu(cw, ebase, ti_g, ti_u, kc_total, lane, kc + nwarps, x32, m, hdim, t)
    while kc < kc_total:
        na, nb, nx = _load_gu(cw, ebase, ti_g, ti_u, kc_total, lane, kc + 2 * nwarps, x32, m, hdim, t)
        x0, x1, x2, x3 = _bf16x4(xa[0], xa[1])
        x4, x5, x6, x7 = _bf16x4(xa[2], xa[3])
        dg, dg8 = _tile_dots(wa, x0, x1, x2, x3, x4, x5, x6, x7)
        du, du8 = _tile_dots(wb, x0, x1, x2, x3, x4, x5, x6, x7)
        if md == 2:
            sg = cs[(e * rbt + rblk_g) * kb_total + (kc >> 2)]
            su = cs[(e * rbt + rblk_u) * kb_total + (kc >> 2)]
            dg *= sg
            dg8 *= sg
            du *= su
            du8 *= su
        ag += dg
        ag8 += dg8
        au += du
        au8 += du8
        wa, wb, xa = pa, pb, px
        pa, pb, px = na, nb, nx
        kc += nwarps
    ag = _tsum(ag)
    ag8 = _tsum(ag8)
    au = _tsum(au)
    au8 = _tsum(au8)
    if t == 0:
        red[warp, g] = ag
        red[warp, g + 8] = ag8
        red[warp, 16 + g] = au
        red[warp, 24 + g] = au8
    cuda.syncthreads()
    if tid < 16:
        gate = np.float32(0.0)
        up = np.float32(0.0)
        for w in range(nwarps):
            gate += red[w, tid]
            up += red[w, 16 + tid]
        rg = ti_g * 16 + tid
        if md != 2:
            gate *= _scale(cs, md, e, pr, 0, 2 * ni, rg, rbt, 0, kb_total, 0)
            up *= _scale(cs, md, e, pr, pr - 1, 2 * ni, rg + ni, rbt, 0, kb_total, 0)
        h[slot * h_stride + rg] = _act(gate, act_kind) * up


@device_jit(inline="always")
def _load_dn(h32, h_stride, ids, wts, topk, e_count, rt, sh, logit, has_logit, n_slots, n_cols, tile, lane, t,
             r_g, r_g8, rblk, m, item, n_routed, n_items):
    """Item (slot, chunk): tile word quad, coef * scale of rows g / g+8, 8 fp32 h (zeros past the end).
    ``rt`` / ``sh``: the routed / shared stacks' (codes, scale, ...) tuples (CPython turns calls of
    more than ~30 arguments into *args calls, which numba cannot inline)."""
    codes, sc, mode, rb_total, kb_total, kc_total, nt_total, inter = rt
    sh_codes, sh_sc, sh_mode, sh_kb_total, sh_kc_total, sh_inter = sh
    zw = np.uint32(0)
    w4, ha, hb = (zw, zw, zw, zw), (zw, zw, zw, zw), (zw, zw, zw, zw)
    cg = np.float32(0.0)
    cg8 = np.float32(0.0)
    if item < n_items:
        if item < n_routed:
            j = item // kc_total
            kc = item - j * kc_total
            e = _expert(ids, m, j, topk, e_count)
            w4 = ptx.ld_v4(codes, ((e * nt_total + tile) * kc_total + kc) * 128 + lane * 4)
            ni = inter
            coef = wts[m * topk + j]
            cg = coef * _scale(sc, mode, e, 1, 0, n_cols, r_g, rb_total, rblk, kb_total, kc)
            cg8 = coef * _scale(sc, mode, e, 1, 0, n_cols, r_g8, rb_total, rblk, kb_total, kc)
        else:
            j = topk
            kc = item - n_routed
            w4 = ptx.ld_v4(sh_codes, (tile * sh_kc_total + kc) * 128 + lane * 4)
            ni = sh_inter
            coef = np.float32(1.0)
            if has_logit:
                coef = np.float32(np.float32(1.0) / (np.float32(1.0) + math.exp(-logit[m])))
            cg = coef * _scale(sh_sc, sh_mode, 0, 1, 0, n_cols, r_g, rb_total, rblk, sh_kb_total, kc)
            cg8 = coef * _scale(sh_sc, sh_mode, 0, 1, 0, n_cols, r_g8, rb_total, rblk, sh_kb_total, kc)
        col = kc * 32 + 8 * t
        if col < ni:  # h past a slot's own I is not written (and the weights there are zero padding)
            hbase = (m * n_slots + j) * h_stride + col
            ha = ptx.ld_v4_cached(h32, hbase)
            hb = ptx.ld_v4_cached(h32, hbase + 4)
    return w4, cg, cg8, ha, hb


@jit
def _moe_fp8_dn_kernel(h32, h_stride, ids, wts, topk, e_count, codes, sc, mode, rb_total, kb_total, kc_total,
                       nt_total, inter, sh_codes, sh_sc, sh_mode, sh_kb_total, sh_kc_total, sh_inter, logit,
                       has_logit, n_slots, out, n_cols, out_f32, res, has_res):
    red = cuda.shared.array((MAX_WARPS, 16), np.float32)
    tid = cuda.threadIdx.x
    lane = tid & 31
    warp = tid >> 5
    nwarps = cuda.blockDim.x >> 5
    g = lane >> 2
    t = lane & 3
    tile = cuda.blockIdx.x
    m = cuda.blockIdx.y
    n_routed = topk * kc_total
    n_items = n_routed + (n_slots - topk) * sh_kc_total
    rblk = (tile * 16) >> 7
    r_g = min(tile * 16 + g, n_cols - 1)  # padding rows (H % 16 != 0) must not index the scales out of range
    r_g8 = min(tile * 16 + g + 8, n_cols - 1)
    rt = (codes, sc, mode, rb_total, kb_total, kc_total, nt_total, inter)
    sh = (sh_codes, sh_sc, sh_mode, sh_kb_total, sh_kc_total, sh_inter)
    z = np.float32(0.0)
    acc, acc8 = z, z
    item = warp  # software pipeline two items deep
    w4, cg, cg8, ha, hb = _load_dn(h32, h_stride, ids, wts, topk, e_count, rt, sh, logit, has_logit, n_slots,
                                   n_cols, tile, lane, t, r_g, r_g8, rblk, m, item, n_routed, n_items)
    pw4, pg, pg8, pha, phb = _load_dn(h32, h_stride, ids, wts, topk, e_count, rt, sh, logit, has_logit, n_slots,
                                      n_cols, tile, lane, t, r_g, r_g8, rblk, m, item + nwarps, n_routed, n_items)
    while item < n_items:
        nw4, ng, ng8, nha, nhb = _load_dn(h32, h_stride, ids, wts, topk, e_count, rt, sh, logit, has_logit,
                                          n_slots, n_cols, tile, lane, t, r_g, r_g8, rblk, m, item + 2 * nwarps,
                                          n_routed, n_items)
        dg, dg8 = _tile_dots(w4, ptx.bits_to_f32(ha[0]), ptx.bits_to_f32(ha[1]), ptx.bits_to_f32(ha[2]),
                             ptx.bits_to_f32(ha[3]), ptx.bits_to_f32(hb[0]), ptx.bits_to_f32(hb[1]),
                             ptx.bits_to_f32(hb[2]), ptx.bits_to_f32(hb[3]))
        acc += dg * cg
        acc8 += dg8 * cg8
        w4, cg, cg8, ha, hb = pw4, pg, pg8, pha, phb
        pw4, pg, pg8, pha, phb = nw4, ng, ng8, nha, nhb
        item += nwarps
    acc = _tsum(acc)
    acc8 = _tsum(acc8)
    if t == 0:
        red[warp, g] = acc
        red[warp, g + 8] = acc8
    cuda.syncthreads()
    row = tile * 16 + tid
    if tid < 16 and row < n_cols:
        a = np.float32(0.0)
        for w in range(nwarps):
            a += red[w, tid]
        store_out(out, out_f32, res, has_res, m, n_cols, row, a)


def _scale_mode(scale, e, n, k, what, inter=None):
    """(mode, pair, rb_total, kb_total, up_sub, up_add) of one expert stack's scale tensor."""
    if not isinstance(scale, torch.Tensor) or scale.dtype != torch.float32 or not scale.is_contiguous():
        raise KernelError(f"moe_fp8: {what} scale must be a contiguous float32 tensor")
    kb = -(-k // 128)
    if scale.shape[0] == e:
        if scale.numel() == e:
            return PER_TENSOR, 1, 1, 1, 0, 0
        if inter is not None and scale.dim() == 2 and scale.shape[1] == 2:
            return PER_TENSOR, 2, 1, 1, 0, 0
        if scale.dim() == 2 and scale.shape[1] == n:
            return PER_CHANNEL, 1, 1, 1, 0, 0
        if scale.dim() == 3 and scale.shape[2] == kb:
            if scale.shape[1] == -(-n // 128):
                return BLOCK128, 1, scale.shape[1], kb, (inter or 0), 0
            if inter is not None and scale.shape[1] == 2 * (-(-inter // 128)):
                return BLOCK128, 1, scale.shape[1], kb, 0, -(-inter // 128)
    shapes = f"[{e}], [{e}, {n}], [{e}, {-(-n // 128)}, {kb}]"
    if inter is not None:
        shapes += f", [{e}, 2], [{e}, {2 * (-(-inter // 128))}, {kb}]"
    raise KernelError(f"moe_fp8: {what} scale shape {list(scale.shape)} is none of {shapes}")


def _check_codes(c, what, e=None):
    if not isinstance(c, torch.Tensor) or c.dtype != torch.int32 or c.dim() != 5 or tuple(c.shape[3:]) != (32, 4) \
            or not c.is_contiguous() or (e is not None and c.shape[0] != e):
        raise KernelError(f"moe_fp8: {what} codes must be fp8_experts_tile output int32 [E, NT, KC, 32, 4]"
                          f"{'' if e is None else f' with E={e}'}, got {getattr(c, 'dtype', None)} "
                          f"{list(getattr(c, 'shape', []))}")


def _check(x, ids, wts, gate_up, down, out, h, shared, shared_gate_logit, residual):
    m, hdim = check_routing("moe_fp8", x, ids, wts, h_multiple=8)
    if not (isinstance(gate_up, (tuple, list)) and len(gate_up) == 2 and isinstance(down, (tuple, list))
            and len(down) == 2):
        raise KernelError("moe_fp8: gate_up and down must be (codes, scale) pairs")
    gu_c, gu_s = gate_up
    dn_c, dn_s = down
    _check_codes(gu_c, "gate_up")
    e = gu_c.shape[0]
    _check_codes(dn_c, "down", e)
    inter = gu_c.shape[1] * 8
    kc_g = gu_c.shape[2]
    if kc_g != -(-hdim // 32) or dn_c.shape[1] * 16 < hdim or dn_c.shape[1] * 16 >= hdim + 32 \
            or dn_c.shape[2] != -(-inter // 32):
        raise KernelError(f"moe_fp8: expert tiles do not match H={hdim} (gate_up {list(gu_c.shape)}, down "
                          f"{list(dn_c.shape)}); need I % 16 == 0 and tiles from fp8_experts_tile")
    gu_mode = _scale_mode(gu_s, e, 2 * inter, hdim, "gate_up", inter)
    dn_mode = _scale_mode(dn_s, e, hdim, inter, "down")
    topk = ids.shape[1]
    sh_inter, sh_gu_mode, sh_dn_mode = 0, None, None
    if shared is not None:
        if not isinstance(shared, (tuple, list)) or len(shared) != 4:
            raise KernelError("moe_fp8: shared must be (gu_codes, gu_scale, dn_codes, dn_scale) 1-expert stacks")
        sgc, sgs, sdc, sds = shared
        _check_codes(sgc, "shared gate_up", 1)
        _check_codes(sdc, "shared down", 1)
        sh_inter = sgc.shape[1] * 8
        if sgc.shape[2] != kc_g or sdc.shape[1] != dn_c.shape[1] or sdc.shape[2] != -(-sh_inter // 32):
            raise KernelError(f"moe_fp8: shared expert tiles do not match H={hdim} (gate_up {list(sgc.shape)}, "
                              f"down {list(sdc.shape)}); need I_s % 16 == 0")
        sh_gu_mode = _scale_mode(sgs, 1, 2 * sh_inter, hdim, "shared gate_up", sh_inter)
        sh_dn_mode = _scale_mode(sds, 1, hdim, sh_inter, "shared down")
    check_shared_logit("moe_fp8", shared, shared_gate_logit, m)
    want_h = scratch_shape(m, topk, inter, sh_inter if shared is not None else None)
    check_h("moe_fp8", h, want_h)
    check_out("moe_fp8", out, m, hdim)
    check_residual("moe_fp8", residual, out)
    return m, hdim, e, inter, sh_inter, topk, gu_mode, dn_mode, sh_gu_mode, sh_dn_mode, want_h


def moe_fp8(x, topk_ids, topk_weights, gate_up, down, out, h, *, activation: int = SILU, shared=None,
            shared_gate_logit=None, residual=None, warps_gu=None, warps_dn=None) -> None:
    """``out[m] = sum_j w[m,j] * down_e(act(gate_e x) * up_e x) (+ sigmoid(l[m]) * shared) (+ res)``.

    gate_up / down: (codes from ``fp8_experts_tile``, float32 scale) pairs; shared: optional
    (gu_codes, gu_scale, dn_codes, dn_scale) 1-expert stacks; h: fp32 scratch of
    ``moe_fp8_scratch_shape``. No allocation, no host sync."""
    (m, hdim, e_count, inter, sh_inter, topk, gu_mode, dn_mode, sh_gu_mode, sh_dn_mode,
     (_, n_slots, h_stride)) = _check(x, topk_ids, topk_weights, gate_up, down, out, h, shared,
                                      shared_gate_logit, residual)
    gu_c, gu_s = gate_up
    dn_c, dn_s = down
    if shared is not None:
        sgc, sgs, sdc, sds = shared
    else:  # dummies: never read
        sgc, sgs, sdc, sds = gu_c[:1], gu_s[:1], dn_c[:1], dn_s[:1]
        sh_gu_mode, sh_dn_mode = gu_mode, dn_mode
    require_aligned("moe_fp8", x, h, gu_c, dn_c, sgc, sdc)
    kc_g = gu_c.shape[2]
    grid_gu = (max(inter, sh_inter) // 16, m * n_slots)
    wg = warps_gu or block_warps(grid_gu[0] * grid_gu[1], kc_g, MAX_WARPS, compiled_regs(_moe_fp8_gu_kernel))
    gm, gp, grb, gkb, gus, gua = gu_mode
    sm_, sp, srb, _, sus, sua = sh_gu_mode
    launch(_moe_fp8_gu_kernel, grid_gu, 32 * wg,
           x.view(torch.int32).reshape(-1), hdim, topk_ids.reshape(-1), topk, e_count,
           gu_c.reshape(-1), gu_s.reshape(-1), gm, gp, grb, gkb, gus, gua, gu_c.shape[1], inter,
           sgc.reshape(-1), sgs.reshape(-1), sm_, sp, srb, sus, sua, sgc.shape[1], sh_inter,
           kc_g, n_slots, h_stride, int(activation), h.reshape(-1))
    dm, _, drb, dkb, _, _ = dn_mode
    sdm, _, _, sdkb, _, _ = sh_dn_mode
    nt_d, kc_d = dn_c.shape[1], dn_c.shape[2]
    sh_kc = sdc.shape[2] if shared is not None else 0
    grid_dn = (-(-hdim // 16), m)
    wd = warps_dn or block_warps(grid_dn[0] * grid_dn[1], topk * kc_d + sh_kc, MAX_WARPS,
                                  compiled_regs(_moe_fp8_dn_kernel))
    launch(_moe_fp8_dn_kernel, grid_dn, 32 * wd,
           h.view(torch.int32).reshape(-1), h_stride, topk_ids.reshape(-1), topk_weights.reshape(-1), topk,
           e_count, dn_c.reshape(-1), dn_s.reshape(-1), dm, drb, dkb, kc_d, nt_d, inter,
           sdc.reshape(-1), sds.reshape(-1), sdm, sdkb, max(sh_kc, 1), sh_inter,
           *logit_args(shared_gate_logit, topk_weights), n_slots, *out_args(out, hdim, residual))


def _dequant_expert(codes, scale, mode, e, n, k, inter=None):
    """float32 [n, k] of expert e (the up half of a split-blocked gate_up scale handled)."""
    w = fp8_untile(codes[e], n, k)
    md, pair, rb, kb, up_sub, up_add = mode
    if md == PER_TENSOR and pair == 2:
        wf = w.view(torch.float8_e4m3fn).float()
        s = scale[e].reshape(2)
        return torch.cat([wf[:inter] * s[0], wf[inter:] * s[1]])
    if md == BLOCK128 and up_add:
        return torch.cat([fp8_dequant(w[:inter], scale[e, :up_add]), fp8_dequant(w[inter:], scale[e, up_add:])])
    return fp8_dequant(w, scale[e])


def moe_fp8_ref(x, topk_ids, topk_weights, gate_up, down, out, h, *, activation: int = SILU, shared=None,
                shared_gate_logit=None, residual=None, warps_gu=None, warps_dn=None) -> None:
    """Torch reference of ``moe_fp8`` (same arguments; fills ``h`` too): dequantise, fp32 math."""
    (m, hdim, e_count, inter, sh_inter, topk, gu_mode, dn_mode, sh_gu_mode, sh_dn_mode,
     _) = _check(x, topk_ids, topk_weights, gate_up, down, out, h, shared, shared_gate_logit, residual)

    def experts(j, e):
        if j is None:
            sgc, sgs, sdc, sds = shared
            return (_dequant_expert(sgc, sgs, sh_gu_mode, 0, 2 * sh_inter, hdim, sh_inter),
                    _dequant_expert(sdc, sds, sh_dn_mode, 0, hdim, sh_inter))
        return (_dequant_expert(gate_up[0], gate_up[1], gu_mode, e, 2 * inter, hdim, inter),
                _dequant_expert(down[0], down[1], dn_mode, e, hdim, inter))

    moe_ref_combine(x, topk_ids, topk_weights, experts, out, h, activation, shared_gate_logit, residual)


def warmup(device="cuda") -> None:
    """Compile and load both kernels for the specialisations real calls use (int32/int64 ids,
    bf16/fp32 out, +-residual, +-shared; the scale granularity is a runtime argument)."""
    e, inter, hdim = 2, 16, 64
    gu = fp8_experts_tile(torch.zeros(e, 2 * inter, hdim, dtype=torch.uint8, device=device))
    dn = fp8_experts_tile(torch.zeros(e, hdim, inter, dtype=torch.uint8, device=device))
    gate_up = (gu, torch.ones(e, device=device))
    down = (dn, torch.ones(e, device=device))
    shared = (gu[:1].clone(), torch.ones(1, device=device), dn[:1].clone(), torch.ones(1, device=device))
    warmup_moe(moe_fp8, (gate_up, down), hdim, inter, shared=shared, device=device)
