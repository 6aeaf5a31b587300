"""NVFP4 MoE GEMV for decode: top-k routed experts (+ an optional shared expert) in two launches.

Weights are per-layer contiguous expert buffers from ``repack.nvfp4_experts_tile``:
  gate_up codes int32 [E, NTg, KCg, 32, 4] (rows: I gate rows, then I up rows; cols H),
  gate_up scales int16 [E, NTg, KCg, 32], gate_up global scales float32 [E, 2] (gate, up) or [E];
  down codes int32 [E, NTd, KCd, 32, 4] (rows H, cols I), down scales, down global scales [E].
``topk_ids`` (int32 [M, k]) and ``topk_weights`` (float32 [M, k]) are read on the device: no host
sync, graph-capturable. Gemma's ``router.per_expert_scale`` must already be folded into the
weights (or into the down global scales).

Launch 1 (grid I/16 x M*S, S = k + shared): a block computes 16 gate rows and the matching 16 up
rows of one (token, expert) pair and writes ``act(gate) * up`` (SiLU, or GELU-tanh) in fp32 to the
caller's scratch ``h`` [M, S, I]: the activation is fused into the down projection's input.
Launch 2 (grid H/16 x M): a block computes 16 output rows; its warps take (slot, 64-column chunk)
items, scale each item's mma result by ``topk_weight * down_global_scale`` and sum in fp32; the
shared expert is one more slot weighted by ``sigmoid(shared_gate_logit[m])`` (or 1). Optional
fused residual add. The shared expert rides in the same two launches (needs the routed experts'
shapes); see bench/results for the fused-vs-separate measurement.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from imp_kernels import ptx
from imp_kernels.compat import cuda
from imp_kernels.errors import KernelError
from imp_kernels.gemv_nvfp4 import nvfp4_dequant
from imp_kernels.launch import block_warps, compiled_regs, device_jit, jit, launch, require_aligned
from imp_kernels.mma_frag import load_x16_raw, nvfp4_frags, store_out, x16_to_f16
from imp_kernels.moe_common import GELU_TANH, MAX_M, SILU, act as _act, act_ref, check_residual, check_routing
from imp_kernels.moe_common import expert_id as _expert, logit_args, out_args, scratch_shape, warmup_moe
from imp_kernels.repack import nvfp4_untile

__all__ = ["warmup", "moe_nvfp4", "moe_nvfp4_ref", "SILU", "GELU_TANH", "moe_scratch_shape"]

MAX_WARPS = 32  # shared-memory sizing; launches use at most LAUNCH_WARPS (80 regs x 1024 threads would not fit)
LAUNCH_WARPS = 16


@device_jit(inline="always")
def _load_gu(codes, scales, ebase_w, ebase_s, kc_total, ti_g, ti_u, lane, kc, x32, k, m, g, t):
    zw = np.uint32(0)
    zq = (zw, zw, zw, zw)
    wa, wb, xa, xb = zq, zq, zq, zq
    sa, sb = zw, zw
    if kc < kc_total:
        ia = (ti_g * kc_total + kc) * 32 + lane
        ib = (ti_u * kc_total + kc) * 32 + lane
        wa = ptx.ld_v4(codes, ebase_w + ia * 4)
        wb = ptx.ld_v4(codes, ebase_w + ib * 4)
        sa = ptx.ld_u16(scales, ebase_s + ia)
        sb = ptx.ld_u16(scales, ebase_s + ib)
        xa, xb = load_x16_raw(x32, m + 1, k, g + m, kc * 64 + 16 * t)
    return wa, wb, sa, sb, xa, xb


@jit
def _moe_gate_up_kernel(x32, hdim, ids, topk, e_count, codes, scales, gs, gs_pair, kc_total, nt_total,
                        sh_codes, sh_scales, sh_gs, sh_gs_pair, n_slots, inter, act_kind, h):
    red = cuda.shared.array((MAX_WARPS, 32), np.float32)
    tid = cuda.threadIdx.x
    lane = tid & 31
    warp = tid >> 5
    nwarps = cuda.blockDim.x >> 5
    g = lane >> 2
    t = lane & 3
    ti_g = cuda.blockIdx.x
    ti_u = ti_g + (inter >> 4)
    slot = cuda.blockIdx.y
    m = slot // n_slots
    j = slot - m * n_slots
    e = _expert(ids, m, j, topk, e_count)
    cw = codes
    cs = scales
    if j >= topk:
        cw = sh_codes
        cs = sh_scales
    ebase_s = e * nt_total * kc_total * 32
    ebase_w = ebase_s * 4
    z = np.float32(0.0)
    a0, a1, a2, a3, b0, b1, b2, b3 = z, z, z, z, z, z, z, z
    kc = warp  # software pipeline two chunks deep
    wa, wb, sa, sb, xa, xb = _load_gu(cw, cs, ebase_w, ebase_s, kc_total, ti_g, ti_u, lane, kc,
                                      x32, hdim, m, g, t)
    pa, pb, psa, psb, pxa, pxb = _load_gu(cw, cs, ebase_w, ebase_s, kc_total, ti_g, ti_u, lane,
                                          kc + nwarps, x32, hdim, m, g, t)
    while kc < kc_total:
        kn = kc + nwarps
        na, nb, nsa, nsb, nxa, nxb = _load_gu(cw, cs, ebase_w, ebase_s, kc_total, ti_g, ti_u, lane,
                                              kn + nwarps, x32, hdim, m, g, t)
        xf = x16_to_f16(xa, xb)
        sca = ptx.cvt_f16x2_e4m3x2(sa)
        scb = ptx.cvt_f16x2_e4m3x2(sb)
        sa_g = ptx.prmt(sca, 0, 0x1010)
        sa_g8 = ptx.prmt(sca, 0, 0x3232)
        sb_g = ptx.prmt(scb, 0, 0x1010)
        sb_g8 = ptx.prmt(scb, 0, 0x3232)
        for s in range(4):
            fa = nvfp4_frags(wa[s], sa_g, sa_g8)
            a0, a1, a2, a3 = ptx.mma_f16(fa[0], fa[1], fa[2], fa[3], xf[2 * s], xf[2 * s + 1],
                                         a0, a1, a2, a3)
            fb = nvfp4_frags(wb[s], sb_g, sb_g8)
            b0, b1, b2, b3 = ptx.mma_f16(fb[0], fb[1], fb[2], fb[3], xf[2 * s], xf[2 * s + 1],
                                         b0, b1, b2, b3)
        wa, wb, sa, sb, xa, xb = pa, pb, psa, psb, pxa, pxb
        pa, pb, psa, psb, pxa, pxb = na, nb, nsa, nsb, nxa, nxb
        kc = kn
    if t == 0:  # column 0 of the mma output is this block's token
        red[warp, g] = a0
        red[warp, g + 8] = a2
        red[warp, 16 + g] = b0
        red[warp, 24 + g] = b2
    cuda.syncthreads()
    if tid < 16:
        gate = np.float32(0.0)
        up = np.float32(0.0)
        for w in range(nwarps):
            gate += red[w, tid]
            up += red[w, 16 + tid]
        if j < topk:
            gsg = gs[e * gs_pair]
            gsu = gs[e * gs_pair + gs_pair - 1]
        else:
            gsg = sh_gs[0]
            gsu = sh_gs[sh_gs_pair - 1]
        gate *= gsg * np.float32(16384.0)
        up *= gsu * np.float32(16384.0)
        h[slot * inter + ti_g * 16 + tid] = _act(gate, act_kind) * up


@device_jit(inline="always")
def _load_h16(h32, base, kcol, inter, g):
    """f32 h[base + kcol : +16] as 4 x 4 words for lanes with g == 0, zeros otherwise."""
    zw = np.uint32(0)
    zq = (zw, zw, zw, zw)
    if g == 0 and kcol < inter:
        i = base + kcol
        return (ptx.ld_v4_cached(h32, i), ptx.ld_v4_cached(h32, i + 4),
                ptx.ld_v4_cached(h32, i + 8), ptx.ld_v4_cached(h32, i + 12))
    return zq, zq, zq, zq


@device_jit(inline="always")
def _h_to_f16(q0, q1, q2, q3):
    return (ptx.cvt_f16x2_f32(ptx.bits_to_f32(q0[1]), ptx.bits_to_f32(q0[0])),
            ptx.cvt_f16x2_f32(ptx.bits_to_f32(q0[3]), ptx.bits_to_f32(q0[2])),
            ptx.cvt_f16x2_f32(ptx.bits_to_f32(q1[1]), ptx.bits_to_f32(q1[0])),
            ptx.cvt_f16x2_f32(ptx.bits_to_f32(q1[3]), ptx.bits_to_f32(q1[2])),
            ptx.cvt_f16x2_f32(ptx.bits_to_f32(q2[1]), ptx.bits_to_f32(q2[0])),
            ptx.cvt_f16x2_f32(ptx.bits_to_f32(q2[3]), ptx.bits_to_f32(q2[2])),
            ptx.cvt_f16x2_f32(ptx.bits_to_f32(q3[1]), ptx.bits_to_f32(q3[0])),
            ptx.cvt_f16x2_f32(ptx.bits_to_f32(q3[3]), ptx.bits_to_f32(q3[2])))


@device_jit(inline="always")
def _load_dn(ids, weights, topk, e_count, codes, scales, gs, sh_codes, sh_scales, sh_gs, sh_logit,
             has_logit, kc_total, nt_total, tile, lane, g, t, h32, inter, n_slots, m, item, n_items):
    zw = np.uint32(0)
    zq = (zw, zw, zw, zw)
    w4, sc, coef = zq, zw, np.float32(0.0)
    q0, q1, q2, q3 = zq, zq, zq, zq
    if item < n_items:
        j = item // kc_total
        kc = item - j * kc_total
        e = _expert(ids, m, j, topk, e_count)
        ebase_s = e * nt_total * kc_total * 32
        i0 = (tile * kc_total + kc) * 32 + lane
        if j < topk:
            w4 = ptx.ld_v4(codes, (ebase_s + i0) * 4)
            sc = ptx.ld_u16(scales, ebase_s + i0)
            coef = weights[m * topk + j] * gs[e]
        else:
            w4 = ptx.ld_v4(sh_codes, i0 * 4)
            sc = ptx.ld_u16(sh_scales, i0)
            coef = sh_gs[0]
            if has_logit:
                coef = coef / (np.float32(1.0) + math.exp(-sh_logit[m]))
        q0, q1, q2, q3 = _load_h16(h32, (m * n_slots + j) * inter, kc * 64 + 16 * t, inter, g)
    return w4, sc, coef, q0, q1, q2, q3


@jit
def _moe_down_kernel(h32, inter, ids, weights, topk, e_count, codes, scales, gs, kc_total, nt_total,
                     sh_codes, sh_scales, sh_gs, sh_logit, has_logit, n_slots, out, n_cols, out_f32,
                     res, has_res):
    red = cuda.shared.array((MAX_WARPS, 16), np.float32)
    tid = cuda.threadIdx.x
    lane = tid & 31
    warp = tid >> 5
    nwarps = cuda.blockDim.x >> 5
    g = lane >> 2
    t = lane & 3
    tile = cuda.blockIdx.x
    m = cuda.blockIdx.y
    n_items = n_slots * kc_total
    z = np.float32(0.0)
    acc0, acc2 = z, z
    item = warp  # software pipeline two items deep
    w4, sc, coef, q0, q1, q2, q3 = _load_dn(ids, weights, topk, e_count, codes, scales, gs, sh_codes,
                                            sh_scales, sh_gs, sh_logit, has_logit, kc_total, nt_total,
                                            tile, lane, g, t, h32, inter, n_slots, m, item, n_items)
    pw4, psc, pcoef, p0, p1, p2, p3 = _load_dn(ids, weights, topk, e_count, codes, scales, gs, sh_codes,
                                               sh_scales, sh_gs, sh_logit, has_logit, kc_total, nt_total,
                                               tile, lane, g, t, h32, inter, n_slots, m, item + nwarps,
                                               n_items)
    while item < n_items:
        nxt = item + nwarps
        nw4, nsc, ncoef, n0, n1, n2, n3 = _load_dn(ids, weights, topk, e_count, codes, scales, gs,
                                                   sh_codes, sh_scales, sh_gs, sh_logit, has_logit,
                                                   kc_total, nt_total, tile, lane, g, t, h32, inter,
                                                   n_slots, m, nxt + nwarps, n_items)
        xf = _h_to_f16(q0, q1, q2, q3)
        s2 = ptx.cvt_f16x2_e4m3x2(sc)
        s_g = ptx.prmt(s2, 0, 0x1010)
        s_g8 = ptx.prmt(s2, 0, 0x3232)
        c0, c1, c2, c3 = z, z, z, z
        for s in range(4):
            f = nvfp4_frags(w4[s], s_g, s_g8)
            c0, c1, c2, c3 = ptx.mma_f16(f[0], f[1], f[2], f[3], xf[2 * s], xf[2 * s + 1],
                                         c0, c1, c2, c3)
        acc0 += c0 * coef
        acc2 += c2 * coef
        w4, sc, coef, q0, q1, q2, q3 = pw4, psc, pcoef, p0, p1, p2, p3
        pw4, psc, pcoef, p0, p1, p2, p3 = nw4, nsc, ncoef, n0, n1, n2, n3
        item = nxt
    if t == 0:
        red[warp, g] = acc0
        red[warp, g + 8] = acc2
    cuda.syncthreads()
    row = tile * 16 + tid
    if tid < 16 and row < n_cols:
        a = np.float32(0.0)
        for w in range(nwarps):
            a += red[w, tid]
        store_out(out, out_f32, res, has_res, m, n_cols, row, a * np.float32(16384.0))


def moe_scratch_shape(m: int, topk: int, inter: int, shared: bool) -> tuple[int, int, int]:
    """Shape of the fp32 scratch ``h`` that ``moe_nvfp4`` needs."""
    return scratch_shape(m, topk, inter, inter if shared else None)


def _check(x, ids, wts, gate_up, down, out, h, shared, residual):
    m, hdim = check_routing("moe_nvfp4", x, ids, wts, x_shape=f"[M<= {MAX_M}, H]", ids_form="int32 [M, k]",
                            wts_form="float32")
    gu_c, gu_s, gu_g = gate_up
    dn_c, dn_s, dn_g = down
    e = gu_c.shape[0]
    if gu_c.dim() != 5 or gu_c.dtype != torch.int32 or gu_s.shape != gu_c.shape[:4] or dn_c.dim() != 5 \
            or dn_c.shape[0] != e or dn_s.shape != dn_c.shape[:4]:
        raise KernelError("moe_nvfp4: expert buffers must come from repack.nvfp4_experts_tile "
                         f"(gate_up {list(gu_c.shape)}, down {list(dn_c.shape)})")
    if gu_c.shape[2] * 64 < hdim:
        raise KernelError(f"moe_nvfp4: gate_up experts take K<={gu_c.shape[2] * 64}, x has H={hdim}")
    inter = h.shape[-1]
    if inter % 16 or gu_c.shape[1] * 16 < 2 * inter or dn_c.shape[2] * 64 < inter:
        raise KernelError(f"moe_nvfp4: intermediate size {inter} (h scratch) does not fit the expert buffers")
    if gu_g.dtype != torch.float32 or gu_g.shape[0] != e or gu_g.numel() not in (e, 2 * e) \
            or dn_g.dtype != torch.float32 or dn_g.numel() != e:
        raise KernelError(f"moe_nvfp4: global scales must be float32 gate_up [E] or [E, 2] and down [E], E={e}")
    n_slots = ids.shape[1] + int(shared is not None)
    if tuple(h.shape) != (m, n_slots, inter) or h.dtype != torch.float32 or not h.is_contiguous():
        raise KernelError(f"moe_nvfp4: h scratch must be float32 {[m, n_slots, inter]}, got {h.dtype} {list(h.shape)}")
    if out.dim() != 2 or out.shape[0] != m or out.shape[1] > dn_c.shape[1] * 16 or not out.is_contiguous() \
            or out.dtype not in (torch.bfloat16, torch.float32):
        raise KernelError(f"moe_nvfp4: out must be contiguous bf16/fp32 [{m}, H], got {out.dtype} {list(out.shape)}")
    if out.shape[1] != hdim:
        raise KernelError(f"moe_nvfp4: out has {out.shape[1]} columns, x has H={hdim}")
    if shared is not None:
        sgc, sgs, sgg, sdc, sds, sdg = shared[:6]
        if sgc.shape[1:] != gu_c.shape[1:] or sdc.shape[1:] != dn_c.shape[1:] or sgc.shape[0] != 1 \
                or sdc.shape[0] != 1:
            raise KernelError("moe_nvfp4: the fused shared expert must be a 1-expert stack with the routed "
                             "experts' shapes; run it as separate gemv_nvfp4 launches otherwise")
    check_residual("moe_nvfp4", residual, out)
    return m, hdim, inter, n_slots


def moe_nvfp4(x, topk_ids, topk_weights, gate_up, down, out, h, *, activation: int = SILU,
              shared=None, shared_gate_logit=None, residual=None, warps_gu=None, warps_dn=None) -> None:
    """``out[m] = sum_j w[m,j] * down_e(act(gate_e x) * up_e x) (+ sigmoid(l[m]) * shared) (+ res)``.

    gate_up / down: (codes, scales, global_scales) tuples of expert stacks; shared: optional
    (gu_codes, gu_scales, gu_gs, dn_codes, dn_scales, dn_gs) 1-expert stacks; h: fp32 scratch of
    ``moe_scratch_shape``. No allocation, no host sync."""
    m, hdim, inter, n_slots = _check(x, topk_ids, topk_weights, gate_up, down, out, h, shared, residual)
    require_aligned("moe_nvfp4", x, h, gate_up[0], down[0])
    gu_c, gu_s, gu_g = gate_up
    dn_c, dn_s, dn_g = down
    e_count = gu_c.shape[0]
    topk = topk_ids.shape[1]
    if shared is not None:
        sgc, sgs, sgg, sdc, sds, sdg = shared[:6]
    else:  # dummies: never read (slot index never reaches topk)
        sgc, sgs, sgg, sdc, sds, sdg = gu_c[:1], gu_s[:1], gu_g[:1], dn_c[:1], dn_s[:1], dn_g[:1]
    kc_g, nt_g = gu_c.shape[2], gu_c.shape[1]
    kc_d, nt_d = dn_c.shape[2], dn_c.shape[1]
    grid_gu = (inter // 16, m * n_slots)
    wg = warps_gu or block_warps(grid_gu[0] * grid_gu[1], kc_g, LAUNCH_WARPS, compiled_regs(_moe_gate_up_kernel))
    launch(_moe_gate_up_kernel, grid_gu, 32 * wg,
           x.view(torch.int32).reshape(-1), hdim, topk_ids.reshape(-1), topk, e_count,
           gu_c.reshape(-1), gu_s.reshape(-1), gu_g.reshape(-1), 2 if gu_g.numel() == 2 * e_count else 1,
           kc_g, nt_g, sgc.reshape(-1), sgs.reshape(-1), sgg.reshape(-1), 2 if sgg.numel() == 2 else 1,
           n_slots, inter, int(activation), h.reshape(-1))
    n_out = out.shape[1]
    grid_dn = (-(-n_out // 16), m)
    wd = warps_dn or block_warps(grid_dn[0] * grid_dn[1], n_slots * kc_d, LAUNCH_WARPS, compiled_regs(_moe_down_kernel))
    launch(_moe_down_kernel, grid_dn, 32 * wd,
           h.view(torch.int32).reshape(-1), inter, topk_ids.reshape(-1), topk_weights.reshape(-1), topk,
           e_count, dn_c.reshape(-1), dn_s.reshape(-1), dn_g.reshape(-1), kc_d, nt_d,
           sdc.reshape(-1), sds.reshape(-1), sdg.reshape(-1), *logit_args(shared_gate_logit, topk_weights),
           n_slots, *out_args(out, n_out, residual))


def moe_nvfp4_ref(x, topk_ids, topk_weights, gate_up, down, out, h, *, activation: int = SILU,
                  shared=None, shared_gate_logit=None, residual=None, warps_gu=None, warps_dn=None) -> None:
    """Torch reference of ``moe_nvfp4`` (same arguments; fills ``h`` too)."""
    m, hdim, inter, n_slots = _check(x, topk_ids, topk_weights, gate_up, down, out, h, shared, residual)
    gu_c, gu_s, gu_g = gate_up
    dn_c, dn_s, dn_g = down
    topk = topk_ids.shape[1]
    gu_g2 = gu_g.reshape(gu_c.shape[0], -1)
    y = torch.zeros(m, out.shape[1], dtype=torch.float32, device=x.device)
    for mi in range(m):
        xm = x[mi].float()
        for j in range(n_slots):
            if j < topk:
                e = int(topk_ids[mi, j])
                cg, sg, gg, cd, sd, gd = gu_c, gu_s, gu_g2[e], dn_c, dn_s, dn_g.reshape(-1)[e]
                coef = topk_weights[mi, j].float()
            else:
                e = 0
                cg, sg, cd, sd = shared[0], shared[1], shared[3], shared[4]
                gg, gd = shared[2].reshape(1, -1)[0], shared[5].reshape(-1)[0]
                coef = torch.sigmoid(shared_gate_logit[mi].float()) if shared_gate_logit is not None \
                    else torch.ones((), device=x.device)
            wgu = nvfp4_dequant(*nvfp4_untile(cg[e], sg[e], 2 * inter, hdim), 1.0)
            gate = (wgu[:inter] @ xm) * gg[0]
            up = (wgu[inter:] @ xm) * gg[-1]
            hv = act_ref(gate, activation) * up
            h[mi, j] = hv
            wd = nvfp4_dequant(*nvfp4_untile(cd[e], sd[e], out.shape[1], inter), 1.0)
            y[mi] += coef * gd * (wd @ hv)
    if residual is not None:
        y = y + residual.float()
    out.copy_(y.to(out.dtype))


def warmup(device="cuda") -> None:
    """Compile and load both MoE kernels (bf16/fp32 out, +-residual, int32/int64 ids)."""
    from imp_kernels.repack import nvfp4_experts_tile

    e, inter, hdim = 2, 16, 64
    gu = nvfp4_experts_tile(torch.zeros(e, 2 * inter, hdim // 2, dtype=torch.uint8, device=device),
                            torch.zeros(e, 2 * inter, hdim // 16, dtype=torch.uint8, device=device))
    dn = nvfp4_experts_tile(torch.zeros(e, hdim, inter // 2, dtype=torch.uint8, device=device),
                            torch.zeros(e, hdim, inter // 16, dtype=torch.uint8, device=device))
    gate_up = (*gu, torch.ones(e, 2, device=device))
    down = (*dn, torch.ones(e, device=device))
    warmup_moe(moe_nvfp4, (gate_up, down), hdim, inter, device=device)
