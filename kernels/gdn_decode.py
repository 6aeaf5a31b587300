"""Gated DeltaNet decode step (Qwen3.6 linear attention) in one launch, state updated in place.

``gdn_decode(mixed, conv_state, conv_w, a, b, a_log, dt_bias, z, norm_w, state, out, eps=...,
n_k_heads=..., workspace=...)`` for one token per sequence:

* ``mixed`` [B, C] bf16 is in_proj_qkv's output (C = 2·Hk·dk + Hv·dv, channels q | k | v);
  ``conv_state`` [B, C, Kc] bf16 holds the last Kc >= K-1 pre-conv columns (the engine keeps K-1,
  transformers K) and is shifted in place; ``conv_w`` [C, K] bf16. y = bf16(silu(bf16(conv))).
* q, k: l2-normalised (``x·rsqrt(Σx² + 1e-6)``), q times dk^-0.5; value head j reads key head
  j // (Hv/Hk); ``beta = bf16(sigmoid(b))``, ``g = -exp(a_log)·softplus(a + dt_bias)`` (``a_log``
  and ``dt_bias`` float32 [Hv], i.e. ``A_log.float()`` and the bf16 ``dt_bias`` as float).
* fp32 state [B, Hv, dk, dv]: ``S·=exp(g); u = kᵀS; δ = β(v − u); S += k⊗δ; o = qᵀS``.
* gated RMSNorm: ``n = bf16(o)·rsqrt(mean(bf16(o)²)+eps)``, ``n = bf16(w·bf16(n))``,
  ``out = bf16(n·silu(z))`` ([B, Hv·dv] bf16).

Grid (Hv, B) of 512 threads: a block owns one value head's whole 128 x dv state, so the gated
norm needs nothing from other blocks. Warp w holds rows w + 16i (i < 8), lane l columns
4l .. 4l+3 of each 128-column chunk (one chunk for dv <= 128), loaded with 16-byte loads that are
issued first, before the conv, so they overlap it. Both column sums the rule needs come from the
OLD state in one pass: with decay a = exp(g), normalised k̂ = k·rk and q̂ = q·rq,
``u = a·rk·(kᵀS)``, ``δ = β(v − u)``, ``o = a·rq·(qᵀS) + (q̂·k̂)·δ``, so a chunk costs two block
barriers (per-warp partial sums in shared memory, then per-column totals) and the new state
``a·S + k̂⊗δ`` is stored once. The conv of the key head's q/k channels is recomputed by each of
its Hv/Hk value-head blocks; an atomic ticket per key head, taken once the block has read its conv
inputs (its latency overlaps the state math), picks the last reader to shift those channels'
conv state, and resets itself, so the workspace is reused every step (graph-capturable). The value
channels have one reader and are shifted right after their conv. Constraints: dk = 128, dv a
multiple of 32 up to 256.
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
from imp_kernels.ops_common import bf16_round, check, ld_bf16, st_bf16, st_v4, u32, want, warp_sum

__all__ = ["gdn_decode", "gdn_decode_ref", "gdn_decode_workspace", "GdnWorkspace", "DK", "L2_EPS"]

DK = 128
L2_EPS = 1e-6
NWARP = 16  # warps per block; each thread holds DK / NWARP = 8 rows of 4 columns per chunk
THREADS = 32 * NWARP
CHUNK = 128  # columns per pass: 32 lanes x 4
MAX_DV = 256


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
def _load_rows(state32, rbase, dv, col):
    """Words of rows w + 16i (i < 8, ``rbase`` = row w's start) at column ``col``."""
    return (ptx.ld_v4(state32, rbase + col), ptx.ld_v4(state32, rbase + 16 * dv + col),
            ptx.ld_v4(state32, rbase + 32 * dv + col), ptx.ld_v4(state32, rbase + 48 * dv + col),
            ptx.ld_v4(state32, rbase + 64 * dv + col), ptx.ld_v4(state32, rbase + 80 * dv + col),
            ptx.ld_v4(state32, rbase + 96 * dv + col), ptx.ld_v4(state32, rbase + 112 * dv + col))


@device_jit(inline="always")
def _unpack(s, i, wv):
    s[4 * i] = ptx.bits_to_f32(wv[0])
    s[4 * i + 1] = ptx.bits_to_f32(wv[1])
    s[4 * i + 2] = ptx.bits_to_f32(wv[2])
    s[4 * i + 3] = ptx.bits_to_f32(wv[3])


@jit(max_registers=112)  # 512 threads must fit the SM's 64K registers; 112 has no spills (ptxas -v)
def _gdn_step_kernel(mixed, conv_state, conv_w, kc, kconv, a_in, b_in, a_log, dt_bias, z, norm_w, eps,
                     state32, out, counters, n_kh, n_vh, dv, q_scale):
    qs = cuda.shared.array(DK, np.float32)
    ks = cuda.shared.array(DK, np.float32)
    vs = cuda.shared.array(MAX_DV, np.float32)
    red = cuda.shared.array((2, NWARP, CHUNK), np.float32)  # per-warp partial column sums (kᵀS, qᵀS)
    dls = cuda.shared.array(CHUNK, np.float32)  # δ of the chunk's columns
    obuf = cuda.shared.array(MAX_DV, np.float32)  # bf16(o) of every column
    scal = cuda.shared.array(2, np.float32)
    flag = cuda.shared.array(1, np.int32)
    t = cuda.threadIdx.x
    lane = t & 31
    w = t >> 5
    j = cuda.blockIdx.x
    b = cuda.blockIdx.y
    rep = n_vh // n_kh
    hk = j // rep
    key_dim = n_kh * DK
    conv_dim = 2 * key_dim + n_vh * dv
    hb = b * n_vh + j
    rbase = hb * DK * dv + w * dv
    # 1. chunk 0 of the state (lanes past dv re-read the last columns and store nothing)
    rows = _load_rows(state32, rbase, dv, min(4 * lane, dv - 4))
    # z and the norm weight of columns lane + 32m, for warp 0's gated norm at the end
    zz = cuda.local.array(8, np.float32)
    nw = cuda.local.array(8, np.float32)
    for m in range(8):
        zz[m] = np.float32(0.0)
        nw[m] = np.float32(0.0)
    if w == 0:
        for m in range(8):
            c = lane + 32 * m
            if c < dv:
                zz[m] = ld_bf16(z, hb * dv + c)
                nw[m] = ld_bf16(norm_w, c)
    # 2. conv + silu: threads 0..127 the key head's q channels, 128..255 its k channels, 256.. v
    if t < DK:
        ch = hk * DK + t
    elif t < 2 * DK:
        ch = key_dim + hk * DK + (t - DK)
    else:
        ch = 2 * key_dim + j * dv + (t - 2 * DK)
    if t < 2 * DK + dv:
        y, _ = _conv_silu(mixed, conv_state, conv_w, b, conv_dim, ch, kc, kconv)
        if t < DK:
            qs[t] = y
        elif t < 2 * DK:
            ks[t - DK] = y
        else:
            vs[t - 2 * DK] = y
            _shift_state(mixed, conv_state, b, conv_dim, ch, kc)  # this block is its only reader
    if t == THREADS - 1:
        beta = bf16_round(np.float32(1.0) / (np.float32(1.0) + np.float32(math.exp(-ld_bf16(b_in, hb)))))
        xa = ld_bf16(a_in, hb) + dt_bias[j]
        sp = xa if xa > np.float32(20.0) else np.float32(math.log1p(math.exp(xa)))
        g = -np.float32(math.exp(a_log[j])) * sp
        scal[0] = beta
        scal[1] = np.float32(math.exp(g))
    cuda.syncthreads()
    # every q/k conv input of this block has been read: take the key head's ticket now, use it last
    old = 0
    if t == 0:
        old = cuda.atomic.add(counters, b * n_kh + hk, 1)
    # 3. l2 norms and q̂·k̂ from raw sums (each warp reduces all 128 channels itself: no barrier)
    sq = np.float32(0.0)
    sk = np.float32(0.0)
    sqk = np.float32(0.0)
    for m in range(4):
        qv = qs[lane + 32 * m]
        kv = ks[lane + 32 * m]
        sq += qv * qv
        sk += kv * kv
        sqk += qv * kv
    sq = warp_sum(sq)
    sk = warp_sum(sk)
    sqk = warp_sum(sqk)
    rq = (np.float32(1.0) / np.float32(math.sqrt(sq + np.float32(L2_EPS)))) * q_scale
    rk = np.float32(1.0) / np.float32(math.sqrt(sk + np.float32(L2_EPS)))
    qk = sqk * rq * rk
    beta = scal[0]
    decay = scal[1]
    kr = cuda.local.array(8, np.float32)
    qr = cuda.local.array(8, np.float32)
    for i in range(8):
        kr[i] = ks[w + 16 * i]
        qr[i] = qs[w + 16 * i]
    s = cuda.local.array(32, np.float32)
    nch = (dv + CHUNK - 1) // CHUNK
    for chn in range(nch):
        cb = CHUNK * chn
        col = cb + 4 * lane
        _unpack(s, 0, rows[0])
        _unpack(s, 1, rows[1])
        _unpack(s, 2, rows[2])
        _unpack(s, 3, rows[3])
        _unpack(s, 4, rows[4])
        _unpack(s, 5, rows[5])
        _unpack(s, 6, rows[6])
        _unpack(s, 7, rows[7])
        # 4. per-warp partial column sums over the warp's 8 rows, then per-column totals
        for e in range(4):
            pk = np.float32(0.0)
            pq = np.float32(0.0)
            for i in range(8):
                pk += kr[i] * s[4 * i + e]
                pq += qr[i] * s[4 * i + e]
            red[0, w, e * 32 + lane] = pk
            red[1, w, e * 32 + lane] = pq
        cuda.syncthreads()
        if t < min(CHUNK, dv - cb):
            idx = (t & 3) * 32 + (t >> 2)  # column cb + t was written by lane t // 4 as element t % 4
            tk = np.float32(0.0)
            tq = np.float32(0.0)
            for ww in range(NWARP):
                tk += red[0, ww, idx]
                tq += red[1, ww, idx]
            dl = (vs[cb + t] - decay * rk * tk) * beta
            dls[t] = dl
            obuf[cb + t] = bf16_round(decay * rq * tq + qk * dl)
        cuda.syncthreads()
        # 5. the new state a·S + k̂⊗δ, stored once
        if col < dv:
            d0, d1, d2, d3 = dls[4 * lane], dls[4 * lane + 1], dls[4 * lane + 2], dls[4 * lane + 3]
            for i in range(8):
                kn = kr[i] * rk
                st_v4(state32, rbase + 16 * i * dv + col, ptx.f32_to_bits(s[4 * i] * decay + kn * d0),
                      ptx.f32_to_bits(s[4 * i + 1] * decay + kn * d1), ptx.f32_to_bits(s[4 * i + 2] * decay + kn * d2),
                      ptx.f32_to_bits(s[4 * i + 3] * decay + kn * d3))
        if chn + 1 < nch:
            rows = _load_rows(state32, rbase, dv, min(col + CHUNK, dv - 4))
    # 6. gated RMSNorm over the head's dv columns (warp 0; every obuf entry was written before
    # the last barrier)
    if w == 0:
        ss = np.float32(0.0)
        for m in range(8):
            c = lane + 32 * m
            if c < dv:
                ss += obuf[c] * obuf[c]
        ss = warp_sum(ss)
        rstd = np.float32(1.0) / np.float32(math.sqrt(ss / np.float32(dv) + eps))
        for m in range(8):
            c = lane + 32 * m
            if c < dv:
                n = bf16_round(obuf[c] * rstd)
                n = bf16_round(nw[m] * n)
                st_bf16(out, hb * dv + c, n * (zz[m] / (np.float32(1.0) + np.float32(math.exp(-zz[m])))))
    # 7. the last of the key head's readers shifts its q/k conv state and resets the ticket
    if t == 0:
        flag[0] = 1 if old == rep - 1 else 0
    cuda.syncthreads()
    if flag[0] == 1 and t < 2 * DK:
        _shift_state(mixed, conv_state, b, conv_dim, ch, kc)
        if t == 0:
            counters[b * n_kh + hk] = 0


@dataclass
class GdnWorkspace:
    """Tickets, one per (sequence, key head): int32, zero between launches."""

    counters: torch.Tensor  # [B*Hk]


def gdn_decode_workspace(batch: int, n_k_heads: int, device) -> GdnWorkspace:
    """Allocate the workspace once per (layer shape, batch); reuse it every step."""
    return GdnWorkspace(torch.zeros(batch * n_k_heads, dtype=torch.int32, device=device))


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
        want(workspace.counters, "workspace.counters", kn, torch.int32, (bsz * n_k_heads,))
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
    launch(_gdn_step_kernel, (hv, bsz), THREADS, bits(mixed), bits(conv_state), bits(conv_w),
           conv_state.shape[2], kconv, bits(a), bits(b), a_log, dt_bias, bits(z), bits(norm_w), np.float32(eps),
           u32(state), bits(out), workspace.counters, n_k_heads, hv, dv, np.float32(DK ** -0.5))


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


def kernel_sigs(T) -> dict:
    """Argument types of the kernel as the wrapper launches it (for imp_kernels.bench.ptx_report)."""
    sig = (T.U16, T.U16, T.U16, T.I, T.I, T.U16, T.U16, T.F32A, T.F32A, T.U16, T.U16, T.F, T.U32, T.U16, T.I32,
           T.I, T.I, T.I, T.F)
    return {"gdn_step": (_gdn_step_kernel, sig)}
