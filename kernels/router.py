"""MoE routers in one launch: router GEMV, fp32 softmax, top-k, renormalise (ids stay on device).

``route(x, weight, ids, weights, top_k=..., workspace=..., norm_scale=None, per_expert_scale=None,
eps=1e-6)`` with x [M, H] bf16 (M <= 8 tokens), the router weight [E, H] bf16 (E <= 256):

* Qwen (``norm_scale=None``): ``logits = bf16(x·Wᵀ)``; ``p = softmax_fp32(logits)``; top-k;
  ``w = p / Σ_topk p``; ``weights`` bf16 (as Qwen casts them) or fp32.
* Gemma (``norm_scale`` = ``router.scale`` [H] bf16, ``per_expert_scale`` [E] bf16): the input is
  ``bf16(bf16(bf16(x̂)·scale)·H^-0.5)`` with x̂ the weightless RMSNorm of x (eps ``eps``), then
  as above, and ``w = w · per_expert_scale[id]`` in fp32 (``weights`` fp32).

``ids`` [M, k] int32 or int64, ordered by descending probability (ties: lower expert id first;
torch.topk may order exact ties differently). The router linear is fused here (one launch for
linear, softmax and top-k): grid E/4 blocks of 4 warps, a warp per expert streaming its row with
16-byte loads (x and the scale come from L1); each block writes its logits to the workspace and
the last block to finish (an atomic ticket, reset by that block) does softmax, top-k by rank
counting, renormalisation and the stores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from imp_kernels import ptx
from imp_kernels.compat import cuda
from imp_kernels.launch import device_jit, jit, launch
from imp_kernels.ops_common import bf16_round, block_max, block_sum, check, hi_f32, ld_bf16, lo_f32, u32, want, warp_sum
from imp_kernels.rmsnorm import rms_norm_torch

__all__ = ["route", "route_ref", "router_workspace", "RouterWorkspace", "MAX_M", "MAX_E"]

MAX_M = 8
MAX_E = 256
MAX_K = 32
EPB = 4  # experts (warps) per block


@device_jit(inline="always")
def _xdot(x32, m, hw, c, wv, sv, gemma, inv_s, root):
    """Σ over 8 columns (chunk c) of router-input row m times the weight words ``wv``."""
    a = ptx.ld_v4_cached(x32, m * hw + 4 * c)
    p = np.float32(0.0)
    for e in range(4):
        xl = lo_f32(a[e])
        xh = hi_f32(a[e])
        if gemma:
            xl = bf16_round(bf16_round(bf16_round(xl * inv_s[m]) * lo_f32(sv[e])) * root)
            xh = bf16_round(bf16_round(bf16_round(xh * inv_s[m]) * hi_f32(sv[e])) * root)
        p += xl * lo_f32(wv[e]) + xh * hi_f32(wv[e])
    return p


@device_jit(inline="always")
def _store_logit(logits, m, m_rows, n_exp, ex, lane, acc):
    if m < m_rows:  # uniform over the warp: the shuffles see every lane
        v = warp_sum(acc)
        if lane == 0 and ex < n_exp:
            logits[m * n_exp + ex] = bf16_round(v)


@jit
def _router_kernel(x32, m_rows, h, w32, n_exp, top_k, gemma, scale32, pes, eps, root, logits, counter,
                   ids32, ids64, ids_is64, wf32, wbf16, w_is_bf16):
    inv_s = cuda.shared.array(MAX_M, np.float32)
    prob = cuda.shared.array(MAX_E, np.float32)
    sel_p = cuda.shared.array(MAX_K, np.float32)
    sel_i = cuda.shared.array(MAX_K, np.int32)
    scratch = cuda.shared.array(32, np.float32)
    flag = cuda.shared.array(1, np.int32)
    tid = cuda.threadIdx.x
    lane = tid & 31
    warp = tid >> 5
    hw = h >> 1
    chunks = h >> 3
    if gemma:  # per-row 1/rms of x, one warp per row
        for m in range(warp, m_rows, EPB):
            ss = np.float32(0.0)
            c = lane
            while c < chunks:
                a = ptx.ld_v4_cached(x32, m * hw + 4 * c)
                for e in range(4):
                    lo = lo_f32(a[e])
                    hi = hi_f32(a[e])
                    ss += lo * lo + hi * hi
                c += 32
            ss = warp_sum(ss)
            if lane == 0:
                inv_s[m] = np.float32(1.0) / np.float32(math.sqrt(ss / np.float32(h) + eps))
        cuda.syncthreads()
    ex = cuda.blockIdx.x * EPB + warp
    # one accumulator per token row, as scalars (an indexed array would live in local memory)
    f = np.float32(0.0)
    a0, a1, a2, a3, a4, a5, a6, a7 = f, f, f, f, f, f, f, f
    if ex < n_exp:
        c = lane
        while c < chunks:
            wv = ptx.ld_v4(w32, ex * hw + 4 * c)
            sv = ptx.ld_v4_cached(scale32, 4 * c) if gemma else wv
            a0 += _xdot(x32, 0, hw, c, wv, sv, gemma, inv_s, root)
            if m_rows > 1:
                a1 += _xdot(x32, 1, hw, c, wv, sv, gemma, inv_s, root)
            if m_rows > 2:
                a2 += _xdot(x32, 2, hw, c, wv, sv, gemma, inv_s, root)
            if m_rows > 3:
                a3 += _xdot(x32, 3, hw, c, wv, sv, gemma, inv_s, root)
            if m_rows > 4:
                a4 += _xdot(x32, 4, hw, c, wv, sv, gemma, inv_s, root)
            if m_rows > 5:
                a5 += _xdot(x32, 5, hw, c, wv, sv, gemma, inv_s, root)
            if m_rows > 6:
                a6 += _xdot(x32, 6, hw, c, wv, sv, gemma, inv_s, root)
            if m_rows > 7:
                a7 += _xdot(x32, 7, hw, c, wv, sv, gemma, inv_s, root)
            c += 32
    _store_logit(logits, 0, m_rows, n_exp, ex, lane, a0)
    _store_logit(logits, 1, m_rows, n_exp, ex, lane, a1)
    _store_logit(logits, 2, m_rows, n_exp, ex, lane, a2)
    _store_logit(logits, 3, m_rows, n_exp, ex, lane, a3)
    _store_logit(logits, 4, m_rows, n_exp, ex, lane, a4)
    _store_logit(logits, 5, m_rows, n_exp, ex, lane, a5)
    _store_logit(logits, 6, m_rows, n_exp, ex, lane, a6)
    _store_logit(logits, 7, m_rows, n_exp, ex, lane, a7)
    cuda.threadfence()
    cuda.syncthreads()
    if tid == 0:
        old = cuda.atomic.add(counter, 0, 1)
        flag[0] = 1 if old == cuda.gridDim.x - 1 else 0
    cuda.syncthreads()
    if flag[0] == 0:
        return
    # last block: softmax, top-k, renormalise, per row
    for m in range(m_rows):
        lmax = np.float32(-np.inf)
        e = tid
        while e < n_exp:
            lmax = max(lmax, logits[m * n_exp + e])
            e += cuda.blockDim.x
        lmax = block_max(lmax, scratch)
        s = np.float32(0.0)
        e = tid
        while e < n_exp:
            ev = np.float32(math.exp(logits[m * n_exp + e] - lmax))
            prob[e] = ev
            s += ev
            e += cuda.blockDim.x
        s = block_sum(s, scratch)
        e = tid
        while e < n_exp:
            prob[e] = prob[e] / s
            e += cuda.blockDim.x
        cuda.syncthreads()
        e = tid
        while e < n_exp:
            pe = prob[e]
            rank = 0
            for o in range(n_exp):
                po = prob[o]
                if po > pe or (po == pe and o < e):
                    rank += 1
            if rank < top_k:
                sel_p[rank] = pe
                sel_i[rank] = e
            e += cuda.blockDim.x
        cuda.syncthreads()
        if tid < top_k:
            tot = np.float32(0.0)
            for r in range(top_k):
                tot += sel_p[r]
            wgt = sel_p[tid] / tot
            eid = sel_i[tid]
            if gemma:
                wgt = wgt * ld_bf16(pes, eid)
            o = m * top_k + tid
            if ids_is64:
                ids64[o] = eid
            else:
                ids32[o] = eid
            if w_is_bf16:
                wbf16[o] = ptx.cvt_bf16_f32(wgt)
            else:
                wf32[o] = wgt
        cuda.syncthreads()
    if tid == 0:
        counter[0] = 0


@dataclass
class RouterWorkspace:
    """fp32 logits [MAX_M, E], the block ticket (int32 [1], zero between launches) and an
    unused int64 word (the kernel's slot for the id dtype not in use)."""

    logits: torch.Tensor
    counter: torch.Tensor
    spare64: torch.Tensor


def router_workspace(n_experts: int, device) -> RouterWorkspace:
    """Allocate once per router shape; reuse every step."""
    return RouterWorkspace(torch.zeros(MAX_M * n_experts, dtype=torch.float32, device=device),
                           torch.zeros(1, dtype=torch.int32, device=device),
                           torch.zeros(1, dtype=torch.int64, device=device))


def _check(x, weight, ids, weights, top_k, workspace, norm_scale, per_expert_scale):
    kn = "route"
    check(x.dim() == 2 and x.dtype == torch.bfloat16 and x.is_contiguous(),
          f"{kn}: x must be contiguous bf16 [M, H], got {x.dtype} {list(x.shape)}")
    m, h = x.shape
    check(1 <= m <= MAX_M and h % 8 == 0,
          f"{kn}: x must have 1..{MAX_M} rows and H a multiple of 8, got {list(x.shape)}")
    check(weight.dim() == 2 and weight.shape[1] == h and 1 <= weight.shape[0] <= MAX_E,
          f"{kn}: weight must be bf16 [E<={MAX_E}, {h}], got {list(weight.shape)}")
    e = weight.shape[0]
    want(weight, "weight", kn, torch.bfloat16, (e, h))
    check(1 <= top_k <= min(e, MAX_K), f"{kn}: top_k={top_k} must be in 1..{min(e, MAX_K)}")
    check(ids.dtype in (torch.int32, torch.int64), f"{kn}: ids must be int32 or int64, got {ids.dtype}")
    want(ids, "ids", kn, ids.dtype, (m, top_k))
    check(weights.dtype in (torch.bfloat16, torch.float32), f"{kn}: weights must be bf16 or float32")
    want(weights, "weights", kn, weights.dtype, (m, top_k))
    check((norm_scale is None) == (per_expert_scale is None),
          f"{kn}: norm_scale and per_expert_scale go together (Gemma's router)")
    if norm_scale is not None:
        want(norm_scale, "norm_scale", kn, torch.bfloat16, (h,))
        want(per_expert_scale, "per_expert_scale", kn, torch.bfloat16, (e,))
    if workspace is not None:
        want(workspace.logits, "workspace.logits", kn, torch.float32, (MAX_M * e,))
        want(workspace.counter, "workspace.counter", kn, torch.int32, (1,))
        want(workspace.spare64, "workspace.spare64", kn, torch.int64, (1,))
    return m, h, e


def route(x: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, *, top_k: int,
          workspace: RouterWorkspace, norm_scale: torch.Tensor | None = None,
          per_expert_scale: torch.Tensor | None = None, eps: float = 1e-6) -> None:
    """Router logits, softmax, top-k, renormalisation into ``ids`` / ``weights`` [M, k]
    (see module doc). No allocation, no host sync."""
    check(workspace is not None, "route: workspace is required (router_workspace, allocated once)")
    m, h, e = _check(x, weight, ids, weights, top_k, workspace, norm_scale, per_expert_scale)
    gemma = norm_scale is not None
    x32 = u32(x)
    i64 = ids.dtype == torch.int64
    wb = weights.dtype == torch.bfloat16
    launch(_router_kernel, -(-e // EPB), 32 * EPB, x32, m, h, u32(weight), e, top_k, int(gemma),
           u32(norm_scale) if gemma else x32,
           per_expert_scale.view(torch.uint16) if gemma else weight.view(torch.uint16).reshape(-1),
           np.float32(eps), np.float32(h ** -0.5), workspace.logits, workspace.counter,
           ids.reshape(-1) if not i64 else workspace.counter, ids.reshape(-1) if i64 else workspace.spare64, int(i64),
           weights.reshape(-1) if not wb else workspace.logits,
           weights.view(torch.uint16).reshape(-1) if wb else weight.view(torch.uint16).reshape(-1), int(wb))


def route_ref(x, weight, ids, weights, *, top_k, workspace=None, norm_scale=None, per_expert_scale=None,
              eps=1e-6) -> None:
    """Torch reference of ``route`` (same arguments): the Qwen / Gemma routers in torch (bf16
    linear, fp32 softmax, ``torch.topk``, renormalised)."""
    _check(x, weight, ids, weights, top_k, workspace, norm_scale, per_expert_scale)
    if norm_scale is not None:
        x = rms_norm_torch(x, None, eps) * norm_scale * (x.shape[1] ** -0.5)
    logits = torch.nn.functional.linear(x, weight)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    w, i = torch.topk(probs, top_k, dim=-1)
    w = w / w.sum(dim=-1, keepdim=True)
    if per_expert_scale is not None:
        w = w * per_expert_scale[i]
    ids.copy_(i)
    weights.copy_(w)


def kernel_sigs(T) -> dict:
    """Argument types of the kernel as the wrapper launches it (for imp_kernels.bench.ptx_report)."""
    sig = (T.U32, T.I, T.I, T.U32, T.I, T.I, T.I, T.U32, T.U16, T.F, T.F, T.F32A, T.I32, T.I32, T.I64, T.I,
           T.F32A, T.U16, T.I)
    return {"router": (_router_kernel, sig)}
