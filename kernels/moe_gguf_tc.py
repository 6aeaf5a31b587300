"""GGUF MoE GEMV on tensor cores for decode: top-k routed experts (+ an optional shared expert) in
two launches, on expert stacks re-tiled by ``experts_tc_tile`` (Q4_K -> "q4", Q6_K / Q8_0 -> "q8",
the layouts of ``repack_gguf``).

``gate``, ``up``, ``down`` are ``(kind, codes [E, NT, KC, 32, 4], scales [E, NT, KC, 32], unscale)``
(unscale = 2^-P of the stack's f16 scales, see ``repack_gguf``):
gate [E, I, H] and up (the same kind), down [E, H, I] (its own kind: a Q4_K_M mix has e.g. Q4_K
gate/up and Q6_K down). ``shared``: the same three for a 1-expert stack with its own I_s (gate/up
of the routed gate's kind, down of the routed down's kind); ``h`` is fp32 [M, S, max(I, I_s)].
``topk_ids`` / ``topk_weights`` (float32) are read on the device: no host sync, no allocation.

Launch 1 (grid ceil(max(I, I_s)/16) x M*S): a block computes 16 gate rows and the matching 16 up
rows of one (token, slot), its warps splitting the chunks of H, and writes ``act(gate) * up`` in
fp32 to ``h``. Launch 2 (grid H/16 x M): a block computes 16 output rows; its warps take (slot,
chunk) items and sum ``coef * mma`` in fp32, coef = the routing weight, or sigmoid(shared logit)
(or 1) for the shared slot; optional fused residual. The decoding is ``gemv_gguf_tc``'s (weights
rounded once to f16); ``h`` enters the down pass as f16 like the NVFP4 MoE's.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from imp_kernels import ptx
from imp_kernels.compat import cuda
from imp_kernels.errors import KernelError
from imp_kernels.gemv_gguf_tc import _q4_tile, _q8_tile
from imp_kernels.launch import block_warps, compiled_regs, device_jit, jit, launch, require_aligned
from imp_kernels.mma_frag import bf16x2_to_f16x2, load_x8_bf16, load_x16_raw, store_out, x16_to_f16
from imp_kernels.moe_common import GELU_TANH, SILU, act as _act, check_out, check_residual, check_routing
from imp_kernels.moe_common import check_shared_logit, expert_id as _expert, logit_args, out_args
from imp_kernels.moe_common import moe_ref_combine, scratch_shape, warmup_moe
from imp_kernels.moe_nvfp4 import _h_to_f16, _load_h16
from imp_kernels.repack_gguf import tc_exponent, tc_tile, tc_untile_dequant

__all__ = ["warmup", "moe_gguf_tc", "moe_gguf_tc_ref", "experts_tc_tile", "SILU", "GELU_TANH"]

MAX_WARPS = 32
LAUNCH_WARPS = 16
_CHUNK = {"q4": 64, "q8": 32}


# ------------------------------------------------------------------------------- gate / up
@device_jit(inline="always")
def _gu_load(q4, gc, gs, uc, us, ebase, kc_total, ti, lane, kc, x32, k, m, g, t):
    zw = np.uint32(0)
    zq = (zw, zw, zw, zw)
    wa, wb, xa, xb = zq, zq, zq, zq
    sa, sb = zw, zw
    if kc < kc_total:
        i0 = ebase + (ti * kc_total + kc) * 32 + lane
        wa = ptx.ld_v4(gc, i0 * 4)
        wb = ptx.ld_v4(uc, i0 * 4)
        mask = 0xFFFFFFFF if q4 else 0xFFFF  # q4 scales are int32 words, q8 ones int16
        sa = np.uint32(int(gs[i0]) & mask)
        sb = np.uint32(int(us[i0]) & mask)
        if q4:
            xa, xb = load_x16_raw(x32, m + 1, k, g + m, kc * 64 + 16 * t)
        else:
            xa = load_x8_bf16(x32, m + 1, k, g + m, kc * 32 + 8 * t)
    return wa, wb, sa, sb, xa, xb


@device_jit(inline="always")
def _gu_body(x32, hdim, ids, topk, e_count, gc, gs, uc, us, kc_total, nt_total, sgc, sgs, suc, sus, sh_nt,
             n_slots, inter, sh_inter, act_kind, h, h_stride, unsc, q4):
    red = cuda.shared.array((MAX_WARPS, 32), np.float32)
    tid = cuda.threadIdx.x
    lane = tid & 31
    warp = tid >> 5
    nwarps = cuda.blockDim.x >> 5
    g = lane >> 2
    t = lane & 3
    ti = cuda.blockIdx.x
    slot = cuda.blockIdx.y
    m = slot // n_slots
    j = slot - m * n_slots
    e = _expert(ids, m, j, topk, e_count)
    rows = inter
    nt = nt_total
    ug, uu = unsc[0], unsc[1]  # [gate, up, shared gate, shared up] unscales
    if j >= topk:
        gc, gs, uc, us = sgc, sgs, suc, sus
        rows = sh_inter
        nt = sh_nt
        ug, uu = unsc[2], unsc[3]
    if ti * 16 >= rows:  # the whole block: a slot narrower than the grid
        return
    ebase = e * nt * kc_total * 32
    z = np.float32(0.0)
    a0, a1, a2, a3, b0, b1, b2, b3 = z, z, z, z, z, z, z, z
    kc = warp  # software pipeline two chunks deep
    wa, wb, sa, sb, xa, xb = _gu_load(q4, gc, gs, uc, us, ebase, kc_total, ti, lane, kc, x32, hdim, m, g, t)
    pa, pb, psa, psb, pxa, pxb = _gu_load(q4, gc, gs, uc, us, ebase, kc_total, ti, lane, kc + nwarps, x32, hdim,
                                          m, g, t)
    while kc < kc_total:
        na, nb, nsa, nsb, nxa, nxb = _gu_load(q4, gc, gs, uc, us, ebase, kc_total, ti, lane, kc + 2 * nwarps, x32,
                                              hdim, m, g, t)
        if q4:
            xf = x16_to_f16(xa, xb)
            a0, a1, a2, a3 = _q4_tile(a0, a1, a2, a3, wa, sa, t, xf)
            b0, b1, b2, b3 = _q4_tile(b0, b1, b2, b3, wb, sb, t, xf)
        else:
            x0, x1 = bf16x2_to_f16x2(xa[0]), bf16x2_to_f16x2(xa[1])
            x2, x3 = bf16x2_to_f16x2(xa[2]), bf16x2_to_f16x2(xa[3])
            a0, a1, a2, a3 = _q8_tile(a0, a1, a2, a3, wa, sa, t, x0, x1, x2, x3)
            b0, b1, b2, b3 = _q8_tile(b0, b1, b2, b3, wb, sb, t, x0, x1, x2, x3)
        wa, wb, sa, sb, xa, xb = pa, pb, psa, psb, pxa, pxb
        pa, pb, psa, psb, pxa, pxb = na, nb, nsa, nsb, nxa, nxb
        kc += nwarps
    if t == 0:  # column 0 of the mma output is this block's token
        red[warp, g] = a0
        red[warp, g + 8] = a2
        red[warp, 16 + g] = b0
        red[warp, 24 + g] = b2
    cuda.syncthreads()
    row = ti * 16 + tid
    if tid < 16 and row < rows:
        gate = np.float32(0.0)
        up = np.float32(0.0)
        for w in range(nwarps):
            gate += red[w, tid]
            up += red[w, 16 + tid]
        h[slot * h_stride + row] = _act(gate * ug, act_kind) * (up * uu)


@jit
def _moe_gu_q4_kernel(x32, hdim, ids, topk, e_count, gc, gs, uc, us, kc_total, nt_total, sgc, sgs, suc, sus, sh_nt,
                      n_slots, inter, sh_inter, act_kind, h, h_stride, unsc):
    _gu_body(x32, hdim, ids, topk, e_count, gc, gs, uc, us, kc_total, nt_total, sgc, sgs, suc, sus, sh_nt,
             n_slots, inter, sh_inter, act_kind, h, h_stride, unsc, True)


@jit
def _moe_gu_q8_kernel(x32, hdim, ids, topk, e_count, gc, gs, uc, us, kc_total, nt_total, sgc, sgs, suc, sus, sh_nt,
                      n_slots, inter, sh_inter, act_kind, h, h_stride, unsc):
    _gu_body(x32, hdim, ids, topk, e_count, gc, gs, uc, us, kc_total, nt_total, sgc, sgs, suc, sus, sh_nt,
             n_slots, inter, sh_inter, act_kind, h, h_stride, unsc, False)


# ------------------------------------------------------------------------------------- down
@device_jit(inline="always")
def _load_h8(h32, base, kcol, rows, g):
    """f32 h[base + kcol : +8] as 2 x 4 words for lanes with g == 0, zeros otherwise."""
    zw = np.uint32(0)
    zq = (zw, zw, zw, zw)
    if g == 0 and kcol < rows:
        i = base + kcol
        return ptx.ld_v4_cached(h32, i), ptx.ld_v4_cached(h32, i + 4)
    return zq, zq


@device_jit(inline="always")
def _dn_load(q4, ids, wts, topk, e_count, dc, ds, sdc, sds, logit, has_logit, kc_r, kc_s, nt_total, tile, lane, g,
             t, h32, h_stride, inter, sh_inter, n_slots, m, item, n_items, unsc):
    zw = np.uint32(0)
    zq = (zw, zw, zw, zw)
    w4, sc, coef = zq, zw, np.float32(0.0)
    q0, q1, q2, q3 = zq, zq, zq, zq
    mask = 0xFFFFFFFF if q4 else 0xFFFF
    if item < n_items:
        if item < topk * kc_r:
            j = item // kc_r
            kc = item - j * kc_r
            e = _expert(ids, m, j, topk, e_count)
            i0 = e * nt_total * kc_r * 32 + (tile * kc_r + kc) * 32 + lane
            w4 = ptx.ld_v4(dc, i0 * 4)
            sc = np.uint32(int(ds[i0]) & mask)
            coef = wts[m * topk + j] * unsc[0]
            rows = inter
        else:
            j = topk
            kc = item - topk * kc_r
            i0 = (tile * kc_s + kc) * 32 + lane
            w4 = ptx.ld_v4(sdc, i0 * 4)
            sc = np.uint32(int(sds[i0]) & mask)
            coef = unsc[1]
            if has_logit:
                coef = unsc[1] / (np.float32(1.0) + math.exp(-logit[m]))
            rows = sh_inter
        base = (m * n_slots + j) * h_stride
        if q4:
            q0, q1, q2, q3 = _load_h16(h32, base, kc * 64 + 16 * t, rows, g)
        else:
            q0, q1 = _load_h8(h32, base, kc * 32 + 8 * t, rows, g)
    return w4, sc, coef, q0, q1, q2, q3


@device_jit(inline="always")
def _dn_body(h32, h_stride, ids, wts, topk, e_count, dc, ds, kc_r, nt_total, sdc, sds, kc_s, logit, has_logit,
             n_slots, inter, sh_inter, out, n_cols, out_f32, res, has_res, unsc, q4):
    red = cuda.shared.array((MAX_WARPS, 16), np.float32)
    tid = cuda.threadIdx.x
    lane = tid & 31
    warp = tid >> 5
    nwarps = cuda.blockDim.x >> 5
    g = lane >> 2
    t = lane & 3
    tile = cuda.blockIdx.x
    m = cuda.blockIdx.y
    n_items = topk * kc_r + (kc_s if n_slots > topk else 0)
    z = np.float32(0.0)
    acc0, acc2 = z, z
    item = warp  # software pipeline two items deep
    w4, sc, coef, q0, q1, q2, q3 = _dn_load(q4, ids, wts, topk, e_count, dc, ds, sdc, sds, logit, has_logit, kc_r,
                                            kc_s, nt_total, tile, lane, g, t, h32, h_stride, inter, sh_inter,
                                            n_slots, m, item, n_items, unsc)
    pw4, psc, pcoef, p0, p1, p2, p3 = _dn_load(q4, ids, wts, topk, e_count, dc, ds, sdc, sds, logit, has_logit,
                                               kc_r, kc_s, nt_total, tile, lane, g, t, h32, h_stride, inter,
                                               sh_inter, n_slots, m, item + nwarps, n_items, unsc)
    while item < n_items:
        nw4, nsc, ncoef, n0, n1, n2, n3 = _dn_load(q4, ids, wts, topk, e_count, dc, ds, sdc, sds, logit, has_logit,
                                                   kc_r, kc_s, nt_total, tile, lane, g, t, h32, h_stride, inter,
                                                   sh_inter, n_slots, m, item + 2 * nwarps, n_items, unsc)
        if q4:
            c0, c1, c2, c3 = _q4_tile(z, z, z, z, w4, sc, t, _h_to_f16(q0, q1, q2, q3))
        else:
            x0 = ptx.cvt_f16x2_f32(ptx.bits_to_f32(q0[1]), ptx.bits_to_f32(q0[0]))
            x1 = ptx.cvt_f16x2_f32(ptx.bits_to_f32(q0[3]), ptx.bits_to_f32(q0[2]))
            x2 = ptx.cvt_f16x2_f32(ptx.bits_to_f32(q1[1]), ptx.bits_to_f32(q1[0]))
            x3 = ptx.cvt_f16x2_f32(ptx.bits_to_f32(q1[3]), ptx.bits_to_f32(q1[2]))
            c0, c1, c2, c3 = _q8_tile(z, z, z, z, w4, sc, t, x0, x1, x2, x3)
        acc0 += c0 * coef
        acc2 += c2 * coef
        w4, sc, coef, q0, q1, q2, q3 = pw4, psc, pcoef, p0, p1, p2, p3
        pw4, psc, pcoef, p0, p1, p2, p3 = nw4, nsc, ncoef, n0, n1, n2, n3
        item += nwarps
    if t == 0:
        red[warp, g] = acc0
        red[warp, g + 8] = acc2
    cuda.syncthreads()
    row = tile * 16 + tid
    if tid < 16 and row < n_cols:
        a = np.float32(0.0)
        for w in range(nwarps):
            a += red[w, tid]
        store_out(out, out_f32, res, has_res, m, n_cols, row, a)


@jit
def _moe_dn_q4_kernel(h32, h_stride, ids, wts, topk, e_count, dc, ds, kc_r, nt_total, sdc, sds, kc_s, logit,
                      has_logit, n_slots, inter, sh_inter, out, n_cols, out_f32, res, has_res, unsc):
    _dn_body(h32, h_stride, ids, wts, topk, e_count, dc, ds, kc_r, nt_total, sdc, sds, kc_s, logit, has_logit,
             n_slots, inter, sh_inter, out, n_cols, out_f32, res, has_res, unsc, True)


@jit
def _moe_dn_q8_kernel(h32, h_stride, ids, wts, topk, e_count, dc, ds, kc_r, nt_total, sdc, sds, kc_s, logit,
                      has_logit, n_slots, inter, sh_inter, out, n_cols, out_f32, res, has_res, unsc):
    _dn_body(h32, h_stride, ids, wts, topk, e_count, dc, ds, kc_r, nt_total, sdc, sds, kc_s, logit, has_logit,
             n_slots, inter, sh_inter, out, n_cols, out_f32, res, has_res, unsc, False)


# ------------------------------------------------------------------------------- host side
def experts_tc_tile(raw: torch.Tensor, qtype: str, e: int, n: int, k: int, exponent: int | None = None
                    ) -> tuple[str, torch.Tensor, torch.Tensor, float]:
    """Raw GGUF expert stack (E consecutive [n, k] matrices of blocks) -> (kind, codes [E, NT, KC, 32, 4],
    scales [E, NT, KC, 32], unscale), one scale exponent for the stack (``tc_exponent`` of all of it
    when None). Whole 32-row tile pairs per expert are tiled as one matrix."""
    rows = raw.reshape(e, n, -1)
    if exponent is None:
        exponent, why = tc_exponent(rows.reshape(e * n, -1), qtype, e * n, k)
        if exponent is None:
            raise KernelError(f"GGUF {qtype} experts have no tensor-core form: {why}")
    if n % 32 == 0:
        kind, codes, scales, unscale = tc_tile(rows.reshape(e * n, -1), qtype, e * n, k, exponent)
        return kind, codes.view(e, -1, *codes.shape[1:]), scales.view(e, -1, *scales.shape[1:]), unscale
    parts = [tc_tile(rows[i], qtype, n, k, exponent) for i in range(e)]
    return parts[0][0], torch.stack([p[1] for p in parts]), torch.stack([p[2] for p in parts]), parts[0][3]


def _check_stack(what, w, e, rows, k):
    kind, codes, scales, _ = w
    if kind not in _CHUNK or codes.dtype != torch.int32 or codes.dim() != 5 or codes.shape[0] != e \
            or codes.shape[3:] != (32, 4) or codes.shape[1] * 16 < rows or codes.shape[2] * _CHUNK[kind] < k:
        raise KernelError(f"moe_gguf_tc: {what} must be an experts_tc_tile stack of {e} x [{rows}, {k}], got "
                         f"{kind!r} {codes.dtype} {list(codes.shape)}")
    sdt = torch.int32 if kind == "q4" else torch.int16
    if scales.dtype != sdt or tuple(scales.shape) != tuple(codes.shape[:4]):
        raise KernelError(f"moe_gguf_tc: {what} scales must be {sdt} {list(codes.shape[:4])}, got {scales.dtype} "
                         f"{list(scales.shape)}")
    return kind


def _check(x, ids, wts, gate, up, down, out, h, shared, shared_gate_logit, residual, inter, shared_inter):
    m, hdim = check_routing("moe_gguf_tc", x, ids, wts)
    e = gate[1].shape[0]
    gk = _check_stack("gate", gate, e, inter, hdim)
    if _check_stack("up", up, e, inter, hdim) != gk or up[1].shape != gate[1].shape:
        raise KernelError("moe_gguf_tc: up must have gate's kind and shape")
    dk = _check_stack("down", down, e, hdim, inter)
    n_slots = ids.shape[1] + int(shared is not None)
    if shared is not None:
        if shared_inter is None:
            raise KernelError("moe_gguf_tc: a shared expert needs shared_inter")
        sg, su, sd = shared
        if _check_stack("shared gate", sg, 1, shared_inter, hdim) != gk \
                or _check_stack("shared up", su, 1, shared_inter, hdim) != gk or su[1].shape != sg[1].shape \
                or _check_stack("shared down", sd, 1, hdim, shared_inter) != dk \
                or sd[1].shape[1] != down[1].shape[1] or sg[1].shape[2] != gate[1].shape[2]:
            raise KernelError("moe_gguf_tc: the shared expert's gate/up must be of the routed gate's kind, its down "
                             "of the routed down's kind, with the routed experts' H")
    want_h = scratch_shape(m, ids.shape[1], inter, shared_inter if shared is not None else None)
    if tuple(h.shape) != want_h or h.dtype != torch.float32 or not h.is_contiguous():
        raise KernelError(f"moe_gguf_tc: h scratch must be contiguous float32 {list(want_h)}, got {h.dtype} "
                         f"{list(h.shape)}")
    check_shared_logit("moe_gguf_tc", shared, shared_gate_logit, m)
    check_out("moe_gguf_tc", out, m, hdim)
    check_residual("moe_gguf_tc", residual, out)
    return m, hdim, gk, dk, n_slots


def moe_gguf_tc(x, topk_ids, topk_weights, gate, up, down, out, h, *, activation: int = SILU, shared=None,
                shared_gate_logit=None, residual=None, inter: int, shared_inter: int | None = None,
                warps_gu=None, warps_dn=None) -> None:
    """``out[m] = sum_j w[m,j] * down_e(act(gate_e x) * up_e x) (+ sigmoid(l[m]) * shared) (+ res)``; see
    the module doc. ``inter`` / ``shared_inter``: the routed / shared intermediate sizes."""
    m, hdim, gk, dk, n_slots = _check(x, topk_ids, topk_weights, gate, up, down, out, h, shared,
                                      shared_gate_logit, residual, inter, shared_inter)
    require_aligned("moe_gguf_tc", x, h, gate[1], up[1], down[1])
    e_count = gate[1].shape[0]
    topk = topk_ids.shape[1]
    sg, su, sd = shared if shared is not None else (gate, up, down)  # never read without a shared slot
    sh_inter = shared_inter if shared is not None else 0
    kc_g, nt_g = gate[1].shape[2], gate[1].shape[1]
    grid_gu = (-(-max(inter, sh_inter) // 16), m * n_slots)
    gu_kernel = _moe_gu_q4_kernel if gk == "q4" else _moe_gu_q8_kernel
    wg = warps_gu or block_warps(grid_gu[0] * grid_gu[1], kc_g, LAUNCH_WARPS, compiled_regs(gu_kernel))
    f32 = np.float32
    launch(gu_kernel, grid_gu, 32 * wg,
           x.view(torch.int32).reshape(-1), hdim, topk_ids.reshape(-1), topk, e_count,
           gate[1].reshape(-1), gate[2].reshape(-1), up[1].reshape(-1), up[2].reshape(-1), kc_g, nt_g,
           sg[1].reshape(-1), sg[2].reshape(-1), su[1].reshape(-1), su[2].reshape(-1), sg[1].shape[1],
           n_slots, inter, sh_inter, int(activation), h.reshape(-1), h.shape[2],
           (f32(gate[3]), f32(up[3]), f32(sg[3]), f32(su[3])))
    kc_r, nt_d = down[1].shape[2], down[1].shape[1]
    grid_dn = (-(-hdim // 16), m)
    dn_kernel = _moe_dn_q4_kernel if dk == "q4" else _moe_dn_q8_kernel
    wd = warps_dn or block_warps(grid_dn[0] * grid_dn[1], topk * kc_r, LAUNCH_WARPS, compiled_regs(dn_kernel))
    launch(dn_kernel, grid_dn, 32 * wd,
           h.view(torch.int32).reshape(-1), h.shape[2], topk_ids.reshape(-1), topk_weights.reshape(-1), topk,
           e_count, down[1].reshape(-1), down[2].reshape(-1), kc_r, nt_d, sd[1].reshape(-1), sd[2].reshape(-1),
           sd[1].shape[2], *logit_args(shared_gate_logit, topk_weights), n_slots, inter, sh_inter,
           *out_args(out, hdim, residual), (f32(down[3]), f32(sd[3])))


def moe_gguf_tc_ref(x, topk_ids, topk_weights, gate, up, down, out, h, *, activation: int = SILU, shared=None,
                    shared_gate_logit=None, residual=None, inter: int, shared_inter: int | None = None,
                    warps_gu=None, warps_dn=None) -> None:
    """Torch reference of ``moe_gguf_tc`` (same arguments): the tiles' f16-rounded weights, fp32 math."""
    _check(x, topk_ids, topk_weights, gate, up, down, out, h, shared, shared_gate_logit, residual, inter,
           shared_inter)
    hdim = x.shape[1]

    def mat(w, i, rows, cols):
        return tc_untile_dequant(w[0], w[1][i], w[2][i], rows, cols, w[3])

    def experts(j, e):
        if j is None:
            return (torch.cat([mat(shared[0], 0, shared_inter, hdim), mat(shared[1], 0, shared_inter, hdim)]),
                    mat(shared[2], 0, hdim, shared_inter))
        return torch.cat([mat(gate, e, inter, hdim), mat(up, e, inter, hdim)]), mat(down, e, hdim, inter)

    moe_ref_combine(x, topk_ids, topk_weights, experts, out, h, activation, shared_gate_logit, residual)


def warmup(device="cuda") -> None:
    """Compile and load the kernels for the kind pairs real mixes use (q4 or q8 gate/up x q4 or q8
    down), with and without a fused shared expert."""
    e, hdim = 2, 256
    for gq, dq in (("Q4_K", "Q6_K"), ("Q4_K", "Q4_K"), ("Q8_0", "Q8_0")):
        inter = 256 if dq != "Q8_0" else 32

        def stack(q, n, k, count=e):
            per_row = {"Q4_K": 144, "Q6_K": 210, "Q8_0": 34}[q] * (k // (32 if q == "Q8_0" else 256))
            return experts_tc_tile(torch.zeros(count * n * per_row, dtype=torch.uint8, device=device), q, count, n, k)

        weights = (stack(gq, inter, hdim), stack(gq, inter, hdim), stack(dq, hdim, inter))
        shared = (stack(gq, inter, hdim, 1), stack(gq, inter, hdim, 1), stack(dq, hdim, inter, 1))
        warmup_moe(moe_gguf_tc, weights, hdim, inter, shared=shared, device=device, inter=inter, shared_inter=inter)
