"""MoE routers in one launch: router GEMV, fp32 softmax, top-k, renormalise (ids stay on device).

``route(x, weight, ids, weights, top_k=..., workspace=..., norm_scale=None, per_expert_scale=None,
eps=1e-6, extra_weight=None, extra_out=None, round_weights_bf16=False)`` with x [M, H] bf16
(M <= 8 tokens), the router weight [E, H] bf16 (E <= 256):

* Qwen (``norm_scale=None``): ``logits = bf16(x·Wᵀ)``; ``p = softmax_fp32(logits)``; top-k;
  ``w = p / Σ_topk p``; ``weights`` bf16 (as Qwen casts them) or fp32.
* Gemma (``norm_scale`` = ``router.scale`` [H] bf16, ``per_expert_scale`` [E] bf16): the input is
  ``bf16(bf16(bf16(x̂)·scale)·H^-0.5)`` with x̂ the weightless RMSNorm of x (eps ``eps``), then
  as above, and ``w = w · per_expert_scale[id]`` in fp32 (``weights`` fp32).
* ``round_weights_bf16``: each weight is rounded to bf16 before it is stored, so fp32 ``weights``
  hold what bf16 ones copied to fp32 would (Qwen's experts combine with bf16 routing weights).
* ``extra_weight`` [R, H] bf16 (R <= 8) with ``extra_out`` [M, R] fp32: R more dot products with
  x as given (not Gemma's router input), ``extra_out = fp32(bf16(x·extra_weightᵀ))``, i.e. what
  a bf16 linear then a copy to fp32 give (Qwen's shared-expert gate logit).

``ids`` [M, k] int32 or int64, ordered by descending probability (ties: lower expert id first;
torch.topk may order exact ties differently).

One launch, grid E + R blocks of 128 threads, a block per router row (the experts, then the
extra rows). Each thread issues all of its (up to 4) 16-byte loads of the row, and of x's row 0,
before any math, so a block waits about one DRAM latency instead of one per loop step (a longer
row loops in groups of 4 loads); Gemma's per-row 1/rms of x (L2-resident) is computed while those
loads are in flight. A two-level reduction in shared memory gives the row's dot per token (no
warp-collective op in the GEMV part); expert logits go, rounded to bf16, to the workspace, extra
ones to ``extra_out``. The last block to finish (an atomic ticket, reset by that block) does
the rest with a warp per token row: each lane holds E/32 (<= 8) logits in registers, warp
reductions give the max and the softmax denominator, then k rounds of a warp-wide argmax over
(probability desc, id asc) pick the experts, lane r keeping the r-th; it renormalises by the
picks' sum in rank order and stores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from imp_kernels import ptx
from imp_kernels.compat import cuda
from imp_kernels.launch import device_jit, jit, launch
from imp_kernels.ops_common import bf16_round, check, hi_f32, ld_bf16, lo_f32, u32, want, warp_sum
from imp_kernels.rmsnorm import rms_norm_torch

__all__ = ["route", "route_ref", "router_workspace", "RouterWorkspace", "MAX_M", "MAX_E", "MAX_EXTRA"]

MAX_M = 8
MAX_E = 256
MAX_K = 32
MAX_EXTRA = 8
THREADS = 128  # a block per router row
NW = THREADS // 32
GROUP = 4  # 16-byte weight loads each thread has in flight before its math
RED = MAX_M * THREADS  # per-thread partial sums [token][thread]
SPLIT = 16  # first reduction level: SPLIT partial sums per token
RED2 = MAX_M * SPLIT


@device_jit(inline="always")
def _ld(arr, i, ok):
    """ptx.ld_v4 (streamed) of words i..i+3, or zeros where ``ok`` is false."""
    if ok:
        return ptx.ld_v4(arr, i)
    z = np.uint32(0)
    return (z, z, z, z)


@device_jit(inline="always")
def _ldc(arr, i, ok):
    """ptx.ld_v4_cached of words i..i+3, or zeros where ``ok`` is false."""
    if ok:
        return ptx.ld_v4_cached(arr, i)
    z = np.uint32(0)
    return (z, z, z, z)


@device_jit(inline="always")
def _load_group(wrow, base, x32, c, chunks):
    """Chunks c, c + THREADS, ... (GROUP of them) of the weight row at word ``base`` (streamed) and
    of x's row 0 (cached), all issued before any is used; zeros past the row's end."""
    c1 = c + THREADS
    c2 = c + 2 * THREADS
    c3 = c + 3 * THREADS
    return (_ld(wrow, base + 4 * c, c < chunks), _ld(wrow, base + 4 * c1, c1 < chunks),
            _ld(wrow, base + 4 * c2, c2 < chunks), _ld(wrow, base + 4 * c3, c3 < chunks),
            _ldc(x32, 4 * c, c < chunks), _ldc(x32, 4 * c1, c1 < chunks),
            _ldc(x32, 4 * c2, c2 < chunks), _ldc(x32, 4 * c3, c3 < chunks))


@device_jit(inline="always")
def _xdot(a, wv, sv, gemma, inv_s, root):
    """Σ over the 8 columns of the x words ``a`` times the weight words ``wv``."""
    p = np.float32(0.0)
    for e in range(4):
        xl = lo_f32(a[e])
        xh = hi_f32(a[e])
        if gemma:
            xl = bf16_round(bf16_round(bf16_round(xl * inv_s) * lo_f32(sv[e])) * root)
            xh = bf16_round(bf16_round(bf16_round(xh * inv_s) * hi_f32(sv[e])) * root)
        p += xl * lo_f32(wv[e]) + xh * hi_f32(wv[e])
    return p


@device_jit(inline="always")
def _chunk(acc, x32, m_rows, hw, c, x0, wv, scale32, gemma, inv_s, root):
    """The 8 per-token sums ``acc`` plus chunk c (8 columns) of every x row times ``wv``; x0 holds
    row 0's words, already loaded. Scalars, not an indexed array (that would live in local memory)."""
    sv = ptx.ld_v4_cached(scale32, 4 * c) if gemma else wv
    a0, a1, a2, a3, a4, a5, a6, a7 = acc
    a0 += _xdot(x0, wv, sv, gemma, inv_s[0], root)
    if m_rows > 1:
        a1 += _xdot(ptx.ld_v4_cached(x32, hw + 4 * c), wv, sv, gemma, inv_s[1], root)
    if m_rows > 2:
        a2 += _xdot(ptx.ld_v4_cached(x32, 2 * hw + 4 * c), wv, sv, gemma, inv_s[2], root)
    if m_rows > 3:
        a3 += _xdot(ptx.ld_v4_cached(x32, 3 * hw + 4 * c), wv, sv, gemma, inv_s[3], root)
    if m_rows > 4:
        a4 += _xdot(ptx.ld_v4_cached(x32, 4 * hw + 4 * c), wv, sv, gemma, inv_s[4], root)
    if m_rows > 5:
        a5 += _xdot(ptx.ld_v4_cached(x32, 5 * hw + 4 * c), wv, sv, gemma, inv_s[5], root)
    if m_rows > 6:
        a6 += _xdot(ptx.ld_v4_cached(x32, 6 * hw + 4 * c), wv, sv, gemma, inv_s[6], root)
    if m_rows > 7:
        a7 += _xdot(ptx.ld_v4_cached(x32, 7 * hw + 4 * c), wv, sv, gemma, inv_s[7], root)
    return (a0, a1, a2, a3, a4, a5, a6, a7)


@device_jit(inline="always")
def _partial(red, m, m_rows, v):
    """This thread's share of token m's sum into ``red`` [token][thread]."""
    if m < m_rows:
        red[m * THREADS + cuda.threadIdx.x] = v


@device_jit(inline="always")
def _split_sums(red, red2, m_rows):
    """First level of the block's per-token sums: red2[m * SPLIT + j] = Σ_i red[m][j + SPLIT·i].
    Through shared memory, not warp shuffles, so a block has no warp-collective op in its GEMV."""
    tid = cuda.threadIdx.x
    cuda.syncthreads()
    if tid < SPLIT * m_rows:
        b = (tid // SPLIT) * THREADS + tid % SPLIT
        s = np.float32(0.0)
        for i in range(THREADS // SPLIT):
            s += red[b + SPLIT * i]
        red2[tid] = s
    cuda.syncthreads()


@device_jit(inline="always")
def _token_sum(red2, m):
    s = np.float32(0.0)
    for j in range(SPLIT):
        s += red2[m * SPLIT + j]
    return s


@device_jit(inline="always")
def _inv_rms(x32, m_rows, hw, chunks, h, eps, red, red2, inv_s):
    """inv_s[m] = 1/rms(x row m) for every token row (the whole block)."""
    tid = cuda.threadIdx.x
    for m in range(m_rows):
        ss = np.float32(0.0)
        c = tid
        while c < chunks:
            a = ptx.ld_v4_cached(x32, m * hw + 4 * c)
            for e in range(4):
                lo = lo_f32(a[e])
                hi = hi_f32(a[e])
                ss += lo * lo + hi * hi
            c += THREADS
        red[m * THREADS + tid] = ss
    _split_sums(red, red2, m_rows)
    if tid < m_rows:
        inv_s[tid] = np.float32(1.0) / np.float32(math.sqrt(_token_sum(red2, tid) / np.float32(h) + eps))
    cuda.syncthreads()


@device_jit(inline="always")
def _warp_max(v):
    v = max(v, ptx.shfl_xor_f32(v, 16))
    v = max(v, ptx.shfl_xor_f32(v, 8))
    v = max(v, ptx.shfl_xor_f32(v, 4))
    v = max(v, ptx.shfl_xor_f32(v, 2))
    return max(v, ptx.shfl_xor_f32(v, 1))


@device_jit(inline="always")
def _logit(logits, b, e, n_exp):
    return logits[b + e] if e < n_exp else np.float32(-np.inf)


@device_jit(inline="always")
def _prob(ev, s, e, n_exp):
    """Expert e's probability; -1 (below every real one) where there is no expert e."""
    return ev / s if e < n_exp else np.float32(-1.0)


@device_jit(inline="always")
def _later(pa, ia, pb, ib):
    """The better of (pa, ia), (pb, ib) where every id of a is below every id of b."""
    if pb > pa:
        return pb, ib
    return pa, ia


@device_jit(inline="always")
def _argmax_step(p, i, lanemask):
    """Butterfly step of the warp argmax over (probability desc, id asc); ids travel as fp32."""
    op = ptx.shfl_xor_f32(p, lanemask)
    oi = ptx.shfl_xor_f32(i, lanemask)
    if op > p or (op == p and oi < i):
        return op, oi
    return p, i


@device_jit(inline="always")
def _drop(p, i, e):
    return np.float32(-1.0) if i == np.float32(e) else p


@device_jit(inline="always")
def _select_row(logits, m, n_exp, top_k, gemma, pes, round_w, ids32, ids64, ids_is64, wf32, wbf16, w_is_bf16):
    """Softmax, top-k and renormalisation of token row m by one warp; lane j holds experts
    j, j + 32, ..., j + 224 (slot order = id order)."""
    lane = cuda.threadIdx.x & 31
    b = m * n_exp
    l0 = _logit(logits, b, lane, n_exp)
    l1 = _logit(logits, b, lane + 32, n_exp)
    l2 = _logit(logits, b, lane + 64, n_exp)
    l3 = _logit(logits, b, lane + 96, n_exp)
    l4 = _logit(logits, b, lane + 128, n_exp)
    l5 = _logit(logits, b, lane + 160, n_exp)
    l6 = _logit(logits, b, lane + 192, n_exp)
    l7 = _logit(logits, b, lane + 224, n_exp)
    mx = _warp_max(max(max(max(l0, l1), max(l2, l3)), max(max(l4, l5), max(l6, l7))))
    e0 = np.float32(math.exp(l0 - mx))
    e1 = np.float32(math.exp(l1 - mx))
    e2 = np.float32(math.exp(l2 - mx))
    e3 = np.float32(math.exp(l3 - mx))
    e4 = np.float32(math.exp(l4 - mx))
    e5 = np.float32(math.exp(l5 - mx))
    e6 = np.float32(math.exp(l6 - mx))
    e7 = np.float32(math.exp(l7 - mx))
    s = warp_sum(((e0 + e1) + (e2 + e3)) + ((e4 + e5) + (e6 + e7)))
    p0 = _prob(e0, s, lane, n_exp)
    p1 = _prob(e1, s, lane + 32, n_exp)
    p2 = _prob(e2, s, lane + 64, n_exp)
    p3 = _prob(e3, s, lane + 96, n_exp)
    p4 = _prob(e4, s, lane + 128, n_exp)
    p5 = _prob(e5, s, lane + 160, n_exp)
    p6 = _prob(e6, s, lane + 192, n_exp)
    p7 = _prob(e7, s, lane + 224, n_exp)
    tot = np.float32(0.0)
    mine_p = np.float32(0.0)
    mine_i = np.float32(0.0)
    for r in range(top_k):
        qa, ia = _later(p0, np.float32(lane), p1, np.float32(lane + 32))
        qb, ib = _later(p2, np.float32(lane + 64), p3, np.float32(lane + 96))
        qc, ic = _later(p4, np.float32(lane + 128), p5, np.float32(lane + 160))
        qd, id_ = _later(p6, np.float32(lane + 192), p7, np.float32(lane + 224))
        qa, ia = _later(qa, ia, qb, ib)
        qc, ic = _later(qc, ic, qd, id_)
        bp, bi = _later(qa, ia, qc, ic)
        bp, bi = _argmax_step(bp, bi, 16)
        bp, bi = _argmax_step(bp, bi, 8)
        bp, bi = _argmax_step(bp, bi, 4)
        bp, bi = _argmax_step(bp, bi, 2)
        bp, bi = _argmax_step(bp, bi, 1)
        if lane == r:
            mine_p = bp
            mine_i = bi
        tot += bp  # every lane: the picks' sum in rank order
        p0 = _drop(p0, bi, lane)
        p1 = _drop(p1, bi, lane + 32)
        p2 = _drop(p2, bi, lane + 64)
        p3 = _drop(p3, bi, lane + 96)
        p4 = _drop(p4, bi, lane + 128)
        p5 = _drop(p5, bi, lane + 160)
        p6 = _drop(p6, bi, lane + 192)
        p7 = _drop(p7, bi, lane + 224)
    if lane < top_k:
        eid = int(mine_i)
        wgt = mine_p / tot
        if gemma:
            wgt = wgt * ld_bf16(pes, eid)
        if round_w:
            wgt = bf16_round(wgt)
        o = m * top_k + lane
        if ids_is64:
            ids64[o] = eid
        else:
            ids32[o] = eid
        if w_is_bf16:
            wbf16[o] = ptx.cvt_bf16_f32(wgt)
        else:
            wf32[o] = wgt


@jit
def _router_kernel(x32, m_rows, h, w32, n_exp, top_k, gemma, scale32, pes, eps, root, logits, counter,
                   ids32, ids64, ids_is64, wf32, wbf16, w_is_bf16, round_w, ex32, n_extra, extra_out):
    inv_s = cuda.shared.array(MAX_M, np.float32)
    red = cuda.shared.array(RED, np.float32)
    red2 = cuda.shared.array(RED2, np.float32)
    flag = cuda.shared.array(1, np.int32)
    tid = cuda.threadIdx.x
    hw = h >> 1
    chunks = h >> 3
    row = cuda.blockIdx.x
    extra = row >= n_exp
    wrow = ex32 if extra else w32
    base = ((row - n_exp) if extra else row) * hw
    gm = gemma != 0 and not extra
    c = tid
    w0, w1, w2, w3, x0, x1, x2, x3 = _load_group(wrow, base, x32, c, chunks)
    if gm:  # while the weight loads are in flight
        _inv_rms(x32, m_rows, hw, chunks, h, eps, red, red2, inv_s)
    f = np.float32(0.0)
    acc = (f, f, f, f, f, f, f, f)
    while c < chunks:
        acc = _chunk(acc, x32, m_rows, hw, c, x0, w0, scale32, gm, inv_s, root)
        if c + THREADS < chunks:
            acc = _chunk(acc, x32, m_rows, hw, c + THREADS, x1, w1, scale32, gm, inv_s, root)
        if c + 2 * THREADS < chunks:
            acc = _chunk(acc, x32, m_rows, hw, c + 2 * THREADS, x2, w2, scale32, gm, inv_s, root)
        if c + 3 * THREADS < chunks:
            acc = _chunk(acc, x32, m_rows, hw, c + 3 * THREADS, x3, w3, scale32, gm, inv_s, root)
        c += GROUP * THREADS
        w0, w1, w2, w3, x0, x1, x2, x3 = _load_group(wrow, base, x32, c, chunks)
    a0, a1, a2, a3, a4, a5, a6, a7 = acc
    _partial(red, 0, m_rows, a0)
    _partial(red, 1, m_rows, a1)
    _partial(red, 2, m_rows, a2)
    _partial(red, 3, m_rows, a3)
    _partial(red, 4, m_rows, a4)
    _partial(red, 5, m_rows, a5)
    _partial(red, 6, m_rows, a6)
    _partial(red, 7, m_rows, a7)
    _split_sums(red, red2, m_rows)
    if tid == 0:  # the block's only global writer, so its fence orders all it wrote before the ticket
        for m in range(m_rows):
            v = bf16_round(_token_sum(red2, m))
            if extra:
                extra_out[m * n_extra + row - n_exp] = v
            else:
                logits[m * n_exp + row] = v
        cuda.threadfence()
        old = cuda.atomic.add(counter, 0, 1)
        flag[0] = 1 if old == cuda.gridDim.x - 1 else 0
    cuda.syncthreads()
    if flag[0] == 0:
        return
    # last block: a warp per token row
    for m in range(tid >> 5, m_rows, NW):
        _select_row(logits, m, n_exp, top_k, gemma, pes, round_w, ids32, ids64, ids_is64, wf32, wbf16, w_is_bf16)
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


def _check(x, weight, ids, weights, top_k, workspace, norm_scale, per_expert_scale, extra_weight, extra_out):
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
    check((extra_weight is None) == (extra_out is None), f"{kn}: extra_weight and extra_out go together")
    if extra_weight is not None:
        check(extra_weight.dim() == 2 and extra_weight.shape[1] == h and 1 <= extra_weight.shape[0] <= MAX_EXTRA,
              f"{kn}: extra_weight must be bf16 [R<={MAX_EXTRA}, {h}], got {list(extra_weight.shape)}")
        r = extra_weight.shape[0]
        want(extra_weight, "extra_weight", kn, torch.bfloat16, (r, h))
        want(extra_out, "extra_out", kn, torch.float32, (m, r))
    if workspace is not None:
        want(workspace.logits, "workspace.logits", kn, torch.float32, (MAX_M * e,))
        want(workspace.counter, "workspace.counter", kn, torch.int32, (1,))
        want(workspace.spare64, "workspace.spare64", kn, torch.int64, (1,))
    return m, h, e


def route(x: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, *, top_k: int,
          workspace: RouterWorkspace, norm_scale: torch.Tensor | None = None,
          per_expert_scale: torch.Tensor | None = None, eps: float = 1e-6, extra_weight: torch.Tensor | None = None,
          extra_out: torch.Tensor | None = None, round_weights_bf16: bool = False) -> None:
    """Router logits, softmax, top-k, renormalisation into ``ids`` / ``weights`` [M, k], and the
    extra rows' logits into ``extra_out`` (see module doc). No allocation, no host sync."""
    check(workspace is not None, "route: workspace is required (router_workspace, allocated once)")
    m, h, e = _check(x, weight, ids, weights, top_k, workspace, norm_scale, per_expert_scale, extra_weight,
                     extra_out)
    gemma = norm_scale is not None
    n_extra = 0 if extra_weight is None else extra_weight.shape[0]
    x32 = u32(x)
    w32 = u32(weight)
    i64 = ids.dtype == torch.int64
    wb = weights.dtype == torch.bfloat16
    launch(_router_kernel, e + n_extra, THREADS, x32, m, h, w32, e, top_k, int(gemma),
           u32(norm_scale) if gemma else x32,
           per_expert_scale.view(torch.uint16) if gemma else weight.view(torch.uint16).reshape(-1),
           np.float32(eps), np.float32(h ** -0.5), workspace.logits, workspace.counter,
           ids.reshape(-1) if not i64 else workspace.counter, ids.reshape(-1) if i64 else workspace.spare64, int(i64),
           weights.reshape(-1) if not wb else workspace.logits,
           weights.view(torch.uint16).reshape(-1) if wb else weight.view(torch.uint16).reshape(-1), int(wb),
           int(round_weights_bf16), u32(extra_weight) if n_extra else w32, n_extra,
           extra_out.reshape(-1) if n_extra else workspace.logits)


def route_ref(x, weight, ids, weights, *, top_k, workspace=None, norm_scale=None, per_expert_scale=None,
              eps=1e-6, extra_weight=None, extra_out=None, round_weights_bf16=False) -> None:
    """Torch reference of ``route`` (same arguments): the Qwen / Gemma routers in torch (bf16
    linear, fp32 softmax, ``torch.topk``, renormalised), the extra rows as a bf16 linear."""
    _check(x, weight, ids, weights, top_k, workspace, norm_scale, per_expert_scale, extra_weight, extra_out)
    if extra_weight is not None:
        extra_out.copy_(torch.nn.functional.linear(x, extra_weight))
    if norm_scale is not None:
        x = rms_norm_torch(x, None, eps) * norm_scale * (x.shape[1] ** -0.5)
    logits = torch.nn.functional.linear(x, weight)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    w, i = torch.topk(probs, top_k, dim=-1)
    w = w / w.sum(dim=-1, keepdim=True)
    if per_expert_scale is not None:
        w = w * per_expert_scale[i]
    if round_weights_bf16:
        w = w.bfloat16()
    ids.copy_(i)
    weights.copy_(w)


def kernel_sigs(T) -> dict:
    """Argument types of the kernel as the wrapper launches it (for imp_kernels.bench.ptx_report)."""
    sig = (T.U32, T.I, T.I, T.U32, T.I, T.I, T.I, T.U32, T.U16, T.F, T.F, T.F32A, T.I32, T.I32, T.I64, T.I,
           T.F32A, T.U16, T.I, T.I, T.U32, T.I, T.F32A)
    return {"router": (_router_kernel, sig)}
