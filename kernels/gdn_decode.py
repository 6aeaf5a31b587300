"""Gated DeltaNet decode step (architectures.md §1.6) in one launch, state updated in place.

``gdn_decode(mixed, conv_state, conv_w, a, b, a_log, dt_bias, z, norm_w, state, out, eps=...,
n_k_heads=..., workspace=...)`` for one token per sequence:

* ``mixed`` [B, C] bf16 is in_proj_qkv's output (C = 2·Hk·dk + Hv·dv, channels q | k | v);
  ``conv_state`` [B, C, Kc] bf16 holds the last Kc >= K-1 pre-conv columns (imp_core keeps K-1,
  transformers K) and is shifted in place; ``conv_w`` [C, K] bf16. y = bf16(silu(bf16(conv))).
* q, k: l2-normalised (``x·rsqrt(Σx² + 1e-6)``), q times dk^-0.5; value head j reads key head
  j // (Hv/Hk); ``beta = bf16(sigmoid(b))``, ``g = -exp(a_log)·softplus(a + dt_bias)`` (``a_log``
  and ``dt_bias`` float32 [Hv], i.e. ``A_log.float()`` and the bf16 ``dt_bias`` as float).
* fp32 state [B, Hv, dk, dv]: ``S·=exp(g); u = kᵀS; δ = β(v − u); S += k⊗δ; o = qᵀS``.
* gated RMSNorm: ``n = bf16(o)·rsqrt(mean(bf16(o)²)+eps)``, ``n = bf16(w·bf16(n))``,
  ``out = bf16(n·silu(z))`` ([B, Hv·dv] bf16).

Grid (dv/32, Hv, B) of 256 threads: a block owns 32 state columns of one value head (each
thread 4 rows x 4 columns, 16-byte loads and stores, issued before the prologue so they overlap
the conv). The conv of the head's q/k channels is recomputed by each of the blocks that read
them; the last of them to finish (an atomic ticket per key head) shifts their conv state, and the
last of a value head's column blocks (a ticket per value head) applies the gated norm over all dv
columns. Tickets reset themselves, so the workspace (``gdn_decode_workspace``) is reused every
step and the launch is graph-capturable. Constraints: dk = 128, dv a multiple of 32 up to 256.
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
from imp_kernels.ops_common import bf16_round, check, ld_bf16, st_bf16, st_v4, u32, want

__all__ = ["gdn_decode", "gdn_decode_ref", "gdn_decode_imp_core", "gdn_decode_workspace", "GdnWorkspace", "DK",
           "L2_EPS"]

DK = 128
L2_EPS = 1e-6


@device_jit(inline="always")
def _conv_silu(mixed, conv_state, conv_w, b, conv_dim, ch, kc, kconv):
    """bf16(silu(bf16(Σ w·[state[-(K-1):], x]))) of one channel, and its new input x."""
    sb = (b * conv_dim + ch) * kc + (kc - kconv + 1)
    wb = ch * kconv
    acc = np.float32(0.0)
    for i in range(kconv - 1):
        acc += ld_bf16(conv_w, wb + i) * ld_bf16(conv_state, sb + i)
    x = ld_bf16(mixed, b * conv_dim + ch)
    acc += ld_bf16(conv_w, wb + kconv - 1) * x
    y = bf16_round(acc)
    return bf16_round(y / (np.float32(1.0) + np.float32(math.exp(-y)))), x


@device_jit(inline="always")
def _shift_state(mixed, conv_state, b, conv_dim, ch, kc):
    sb = (b * conv_dim + ch) * kc
    for i in range(kc - 1):
        conv_state[sb + i] = conv_state[sb + i + 1]
    conv_state[sb + kc - 1] = mixed[b * conv_dim + ch]


@device_jit(inline="always")
def _col_reduce(p):
    """Sum of ``p`` over the warp's 4 row groups (lanes 8 and 16 apart hold the same columns)."""
    p += ptx.shfl_xor_f32(p, 8)
    p += ptx.shfl_xor_f32(p, 16)
    return p


@jit
def _gdn_step_kernel(mixed, conv_state, conv_w, kc, kconv, a_in, b_in, a_log, dt_bias, z, norm_w, eps,
                     state32, out, counters, o_part, ss_part, n_kh, n_vh, dv, q_scale):
    qs = cuda.shared.array(DK, np.float32)
    ks = cuda.shared.array(DK, np.float32)
    vs = cuda.shared.array(32, np.float32)
    red = cuda.shared.array((2, 8, 32), np.float32)
    scal = cuda.shared.array(4, np.float32)
    flag = cuda.shared.array(2, np.int32)
    t = cuda.threadIdx.x
    lane = t & 31
    w = t >> 5
    sl = cuda.blockIdx.x
    j = cuda.blockIdx.y
    b = cuda.blockIdx.z
    nsl = cuda.gridDim.x
    n_b = cuda.gridDim.z
    rep = n_vh // n_kh
    hk = j // rep
    key_dim = n_kh * DK
    conv_dim = 2 * key_dim + n_vh * dv
    c0 = sl * 32
    # 1. the block's state tile: rows rg + 32r, columns c0 + 4cq .. +4 (loads in flight early)
    cq = t & 7
    rg = t >> 3
    sbase = (b * n_vh + j) * DK * dv + c0 + 4 * cq
    w0 = ptx.ld_v4(state32, sbase + rg * dv)
    w1 = ptx.ld_v4(state32, sbase + (rg + 32) * dv)
    w2 = ptx.ld_v4(state32, sbase + (rg + 64) * dv)
    w3 = ptx.ld_v4(state32, sbase + (rg + 96) * dv)
    # z and the norm weight of column t, used only if this block turns out to be the head's last
    zz = np.float32(0.0)
    nw = np.float32(0.0)
    if t < dv:
        zz = ld_bf16(z, (b * n_vh + j) * dv + t)
        nw = ld_bf16(norm_w, t)
    # 2. conv + silu of this key head's q (threads 0..127) and k (128..255) channels, l2 norm
    ch = hk * DK + t if t < DK else key_dim + hk * DK + (t - DK)
    y, _ = _conv_silu(mixed, conv_state, conv_w, b, conv_dim, ch, kc, kconv)
    ssq = y * y
    ssq += ptx.shfl_xor_f32(ssq, 16)
    ssq += ptx.shfl_xor_f32(ssq, 8)
    ssq += ptx.shfl_xor_f32(ssq, 4)
    ssq += ptx.shfl_xor_f32(ssq, 2)
    ssq += ptx.shfl_xor_f32(ssq, 1)
    if lane == 0:
        red[0, w, 0] = ssq
    # value columns of this block: conv, and the conv state shift (this block is their only reader)
    if t < 32:
        chv = 2 * key_dim + j * dv + c0 + t
        yv, _ = _conv_silu(mixed, conv_state, conv_w, b, conv_dim, chv, kc, kconv)
        vs[t] = yv
        _shift_state(mixed, conv_state, b, conv_dim, chv, kc)
    if t == 0:
        beta = bf16_round(np.float32(1.0) / (np.float32(1.0) + np.float32(math.exp(-ld_bf16(b_in, b * n_vh + j)))))
        xa = ld_bf16(a_in, b * n_vh + j) + dt_bias[j]
        sp = xa if xa > np.float32(20.0) else np.float32(math.log1p(math.exp(xa)))
        g = -np.float32(math.exp(a_log[j])) * sp
        scal[0] = beta
        scal[1] = np.float32(math.exp(g))
    cuda.syncthreads()
    wq = 0 if t < DK else 4
    tot = (red[0, wq, 0] + red[0, wq + 1, 0]) + (red[0, wq + 2, 0] + red[0, wq + 3, 0])
    yn = y * (np.float32(1.0) / np.float32(math.sqrt(tot + np.float32(L2_EPS))))
    if t < DK:
        qs[t] = yn * q_scale
    else:
        ks[t - DK] = yn
    cuda.syncthreads()
    # 3. the gated delta rule on the block's 128 x 32 tile
    beta = scal[0]
    decay = scal[1]
    s = cuda.local.array(16, np.float32)
    for e in range(4):
        s[e] = ptx.bits_to_f32(w0[e]) * decay
        s[4 + e] = ptx.bits_to_f32(w1[e]) * decay
        s[8 + e] = ptx.bits_to_f32(w2[e]) * decay
        s[12 + e] = ptx.bits_to_f32(w3[e]) * decay
    k0, k1, k2, k3 = ks[rg], ks[rg + 32], ks[rg + 64], ks[rg + 96]
    for e in range(4):
        p = (k0 * s[e] + k1 * s[4 + e]) + (k2 * s[8 + e] + k3 * s[12 + e])
        p = _col_reduce(p)
        if lane < 8:
            red[1, w, 4 * lane + e] = p
    cuda.syncthreads()
    q0, q1, q2, q3 = qs[rg], qs[rg + 32], qs[rg + 64], qs[rg + 96]
    for e in range(4):
        c = 4 * cq + e
        u = np.float32(0.0)
        for ww in range(8):
            u += red[1, ww, c]
        dl = (vs[c] - u) * beta
        s[e] += k0 * dl
        s[4 + e] += k1 * dl
        s[8 + e] += k2 * dl
        s[12 + e] += k3 * dl
    for e in range(4):
        p = (q0 * s[e] + q1 * s[4 + e]) + (q2 * s[8 + e] + q3 * s[12 + e])
        p = _col_reduce(p)
        if lane < 8:
            red[0, w, 4 * lane + e] = p
    st_v4(state32, sbase + rg * dv, ptx.f32_to_bits(s[0]), ptx.f32_to_bits(s[1]), ptx.f32_to_bits(s[2]),
          ptx.f32_to_bits(s[3]))
    st_v4(state32, sbase + (rg + 32) * dv, ptx.f32_to_bits(s[4]), ptx.f32_to_bits(s[5]), ptx.f32_to_bits(s[6]),
          ptx.f32_to_bits(s[7]))
    st_v4(state32, sbase + (rg + 64) * dv, ptx.f32_to_bits(s[8]), ptx.f32_to_bits(s[9]),
          ptx.f32_to_bits(s[10]), ptx.f32_to_bits(s[11]))
    st_v4(state32, sbase + (rg + 96) * dv, ptx.f32_to_bits(s[12]), ptx.f32_to_bits(s[13]),
          ptx.f32_to_bits(s[14]), ptx.f32_to_bits(s[15]))
    cuda.syncthreads()
    # 4. o (rounded to bf16 as the model does) for the block's 32 columns and its sum of squares
    ob = np.float32(0.0)
    if t < 32:
        for ww in range(8):
            ob += red[0, ww, t]
        ob = bf16_round(ob)
        o_part[(b * n_vh + j) * dv + c0 + t] = ob
    if w == 0:
        sq = ob * ob
        sq += ptx.shfl_xor_f32(sq, 16)
        sq += ptx.shfl_xor_f32(sq, 8)
        sq += ptx.shfl_xor_f32(sq, 4)
        sq += ptx.shfl_xor_f32(sq, 2)
        sq += ptx.shfl_xor_f32(sq, 1)
        if t == 0:
            ss_part[(b * n_vh + j) * nsl + sl] = sq
        cuda.threadfence()
    cuda.syncthreads()
    # 5. tickets, taken together at the end so their round trips overlap: the last reader of this
    # key head's q/k conv columns shifts them; the last column block of this value head norms
    if t == 0:
        old_k = cuda.atomic.add(counters, b * n_kh + hk, 1)
        old_v = cuda.atomic.add(counters, n_b * n_kh + b * n_vh + j, 1)
        flag[0] = 1 if old_k == rep * nsl - 1 else 0
        flag[1] = 1 if old_v == nsl - 1 else 0
    cuda.syncthreads()
    if flag[0] == 1:
        _shift_state(mixed, conv_state, b, conv_dim, ch, kc)
        if t == 0:
            counters[b * n_kh + hk] = 0
    if flag[1] == 1:  # gated RMSNorm over all dv columns of the head (z and w were loaded early)
        tot = np.float32(0.0)
        for q in range(nsl):
            tot += ss_part[(b * n_vh + j) * nsl + q]
        rstd = np.float32(1.0) / np.float32(math.sqrt(tot / np.float32(dv) + eps))
        if t < dv:
            i = (b * n_vh + j) * dv + t
            n = bf16_round(o_part[i] * rstd)
            n = bf16_round(nw * n)
            st_bf16(out, i, n * (zz / (np.float32(1.0) + np.float32(math.exp(-zz)))))
        if t == 0:
            counters[n_b * n_kh + b * n_vh + j] = 0


@dataclass
class GdnWorkspace:
    """Tickets (int32, zero between launches) and per-column-block partials of one shape."""

    counters: torch.Tensor  # [B*Hk + B*Hv]
    o_part: torch.Tensor  # fp32 [B, Hv, dv]
    ss_part: torch.Tensor  # fp32 [B, Hv, dv/32]


def gdn_decode_workspace(batch: int, n_k_heads: int, n_v_heads: int, dv: int, device) -> GdnWorkspace:
    """Allocate the workspace once per (layer shape, batch); reuse it every step."""
    return GdnWorkspace(torch.zeros(batch * (n_k_heads + n_v_heads), dtype=torch.int32, device=device),
                        torch.zeros(batch, n_v_heads, dv, dtype=torch.float32, device=device),
                        torch.zeros(batch, n_v_heads, dv // 32, dtype=torch.float32, device=device))


def _check(mixed, conv_state, conv_w, a, b, a_log, dt_bias, z, norm_w, state, out, n_k_heads, workspace):
    kn = "gdn_decode"
    check(state.dim() == 4 and state.dtype == torch.float32 and state.is_contiguous(),
          f"{kn}: state must be contiguous float32 [B, Hv, dk, dv], got {state.dtype} {list(state.shape)}")
    bsz, hv, dk, dv = state.shape
    check(dk == DK and dv % 32 == 0 and dv <= 256,
          f"{kn}: needs dk = {DK} and dv a multiple of 32 up to 256, got dk={dk} dv={dv}")
    check(n_k_heads >= 1 and hv % n_k_heads == 0, f"{kn}: Hv={hv} must be a multiple of n_k_heads={n_k_heads}")
    c = 2 * n_k_heads * dk + hv * dv
    want(mixed, "mixed", kn, torch.bfloat16, (bsz, c))
    check(conv_w.dim() == 2 and conv_w.shape[0] == c and 2 <= conv_w.shape[1] <= 8,
          f"{kn}: conv_w must be bf16 [{c}, K], got {list(conv_w.shape)}")
    kconv = conv_w.shape[1]
    want(conv_w, "conv_w", kn, torch.bfloat16, (c, kconv))
    check(conv_state.dim() == 3 and conv_state.shape[2] >= kconv - 1,
          f"{kn}: conv_state must be bf16 [{bsz}, {c}, >= {kconv - 1}], got {list(conv_state.shape)}")
    want(conv_state, "conv_state", kn, torch.bfloat16, (bsz, c, conv_state.shape[2]))
    for name, tns in (("a", a), ("b", b)):
        want(tns, name, kn, torch.bfloat16, (bsz, hv))
    for name, tns in (("a_log", a_log), ("dt_bias", dt_bias)):
        want(tns, name, kn, torch.float32, (hv,))
    want(z, "z", kn, torch.bfloat16, (bsz, hv * dv))
    want(norm_w, "norm_w", kn, torch.bfloat16, (dv,))
    want(out, "out", kn, torch.bfloat16, (bsz, hv * dv))
    if workspace is not None:
        want(workspace.counters, "workspace.counters", kn, torch.int32, (bsz * (n_k_heads + hv),))
        want(workspace.o_part, "workspace.o_part", kn, torch.float32, (bsz, hv, dv))
        want(workspace.ss_part, "workspace.ss_part", kn, torch.float32, (bsz, hv, dv // 32))
    return bsz, hv, dv, kconv


def gdn_decode(mixed: torch.Tensor, conv_state: torch.Tensor, conv_w: torch.Tensor, a: torch.Tensor,
               b: torch.Tensor, a_log: torch.Tensor, dt_bias: torch.Tensor, z: torch.Tensor,
               norm_w: torch.Tensor, state: torch.Tensor, out: torch.Tensor, *, eps: float, n_k_heads: int,
               workspace: GdnWorkspace | None = None) -> None:
    """One Gated DeltaNet decode step (see module doc); ``conv_state`` and ``state`` are
    updated in place, the normed, gated output goes to ``out``. No allocation, no host sync."""
    check(workspace is not None, "gdn_decode: workspace is required (gdn_decode_workspace, allocated once)")
    bsz, hv, dv, kconv = _check(mixed, conv_state, conv_w, a, b, a_log, dt_bias, z, norm_w, state, out,
                                n_k_heads, workspace)
    bits = lambda x: x.view(torch.uint16).reshape(-1)  # noqa: E731
    launch(_gdn_step_kernel, (dv // 32, hv, bsz), 256, bits(mixed), bits(conv_state), bits(conv_w),
           conv_state.shape[2], kconv, bits(a), bits(b), a_log, dt_bias, bits(z), bits(norm_w), np.float32(eps),
           u32(state), bits(out), workspace.counters, workspace.o_part.reshape(-1), workspace.ss_part.reshape(-1),
           n_k_heads, hv, dv, np.float32(DK ** -0.5))


def gdn_decode_ref(mixed, conv_state, conv_w, a, b, a_log, dt_bias, z, norm_w, state, out, *, eps, n_k_heads,
                   workspace=None) -> None:
    """Torch reference of ``gdn_decode`` (same arguments), written out step by step in fp32 with
    the model's bf16 roundings (conv, silu, beta, o, the norm's weight product)."""
    bsz, hv, dv, kconv = _check(mixed, conv_state, conv_w, a, b, a_log, dt_bias, z, norm_w, state, out,
                                n_k_heads, workspace)
    kd = n_k_heads * DK
    cols = torch.cat((conv_state[..., conv_state.shape[2] - (kconv - 1):], mixed[..., None]), dim=-1)
    y = (cols.float() * conv_w.float()).sum(-1).bfloat16()
    y = F.silu(y)  # bf16 op: fp32 math, rounded
    conv_state.copy_(torch.cat((conv_state[..., 1:], mixed[..., None]), dim=-1))
    q = y[:, :kd].float().view(bsz, n_k_heads, DK).repeat_interleave(hv // n_k_heads, dim=1)
    k = y[:, kd:2 * kd].float().view(bsz, n_k_heads, DK).repeat_interleave(hv // n_k_heads, dim=1)
    v = y[:, 2 * kd:].float().view(bsz, hv, dv)
    q = q * torch.rsqrt((q * q).sum(-1, keepdim=True) + L2_EPS) * (DK ** -0.5)
    k = k * torch.rsqrt((k * k).sum(-1, keepdim=True) + L2_EPS)
    beta = torch.sigmoid(b).float()
    g = -a_log.exp() * F.softplus(a.float() + dt_bias)
    s = state * g.exp()[..., None, None]
    u = (s * k[..., None]).sum(-2)
    s = s + k[..., None] * ((v - u) * beta[..., None])[..., None, :]
    o = (s * q[..., None]).sum(-2)
    state.copy_(s)
    ob = o.bfloat16().float()
    n = (ob * torch.rsqrt(ob.pow(2).mean(-1, keepdim=True) + eps)).bfloat16()
    n = norm_w * n
    out.copy_((n * F.silu(z.view(bsz, hv, dv).float())).bfloat16().view(bsz, hv * dv))


def gdn_decode_imp_core(mixed, conv_state, conv_w, a, b, a_log, dt_bias, z, norm_w, state, out, *, eps, n_k_heads,
                        workspace=None) -> None:
    """The same step through ``imp_core.layers`` (causal_conv1d, recurrent_gated_delta_rule,
    gated_rms_norm), as the Qwen plugin's decode path runs it; same arguments as ``gdn_decode``.
    Needs a K-1 column conv state (imp_core's layout)."""
    from imp_core.layers.causal_conv import causal_conv1d
    from imp_core.layers.gated_delta import gated_rms_norm, recurrent_gated_delta_rule

    bsz, hv, dv, kconv = _check(mixed, conv_state, conv_w, a, b, a_log, dt_bias, z, norm_w, state, out,
                                n_k_heads, workspace)
    check(conv_state.shape[2] == kconv - 1, "gdn_decode_imp_core: imp_core keeps K-1 conv columns")
    kd = n_k_heads * DK
    y = causal_conv1d(mixed[:, :, None], conv_w, conv_state, activation=F.silu)[:, :, 0]
    q = y[:, :kd].reshape(bsz, 1, n_k_heads, DK)
    k = y[:, kd:2 * kd].reshape(bsz, 1, n_k_heads, DK)
    v = y[:, 2 * kd:].reshape(bsz, 1, hv, dv)
    g = -a_log.exp() * F.softplus(a.float() + dt_bias)
    o, st = recurrent_gated_delta_rule(q, k, v, g[:, None], b.sigmoid()[:, None], state)
    state.copy_(st)
    out.copy_(gated_rms_norm(o, z.view(bsz, 1, hv, dv), norm_w, eps).reshape(bsz, hv * dv))


def kernel_sigs(T) -> dict:
    """Argument types of the kernel as the wrapper launches it (for ops_ptx_report)."""
    sig = (T.U16, T.U16, T.U16, T.I, T.I, T.U16, T.U16, T.F32A, T.F32A, T.U16, T.U16, T.F, T.U32, T.U16, T.I32,
           T.F32A, T.F32A, T.I, T.I, T.I, T.F)
    return {"gdn_step": (_gdn_step_kernel, sig)}
