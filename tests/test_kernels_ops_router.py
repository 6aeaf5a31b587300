"""MoE router kernel (imp_kernels.router) under the CUDA simulator: Qwen and Gemma routers, the
extra rows (Qwen's shared-expert gate) and bf16-rounded fp32 weights."""

from kernels_sim import sim_skip  # noqa: I001  (must precede imp_kernels)

import sys

import pytest
import torch

from imp_core.layers.norms import rms_norm
from imp_kernels.errors import KernelError
from imp_kernels.router import MAX_EXTRA, route, route_ref, router_workspace
from kernel_oracles import route_engine

pytestmark = sim_skip


@pytest.fixture(autouse=True, scope="module")
def _fast_thread_switches():
    """The simulator runs a block's threads as Python threads that wait on each other at every
    barrier; a shorter GIL switch interval makes those hand-overs several times faster."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(5e-4)
    yield
    sys.setswitchinterval(old)


def _expected(logits, k):
    """top-k by (probability desc, id asc) from bf16 logits, renormalised, in float64."""
    p = torch.softmax(logits.double(), dim=-1)
    ids = torch.stack([torch.tensor(sorted(range(p.shape[1]), key=lambda e: (-p[m, e].item(), e))[:k])
                       for m in range(p.shape[0])])
    w = p.gather(1, ids)
    return ids, w / w.sum(-1, keepdim=True)


def _is_bf16(t):
    return torch.equal(t, t.bfloat16().float())


@pytest.mark.parametrize("gemma,m,e,h,k,id_dtype,n_extra,wmode", [
    (False, 1, 24, 64, 8, torch.int32, 0, "bf16"),
    (False, 3, 10, 64, 4, torch.int64, 0, "bf16"),    # E below one warp's 32
    (True, 2, 16, 96, 6, torch.int64, 0, "f32"),
    (False, 1, 256, 64, 8, torch.int32, 1, "f32r"),   # Qwen3.6's router + shared-expert gate (small H)
    (True, 1, 128, 88, 8, torch.int64, 0, "f32"),     # Gemma-4's router (small H)
    (False, 8, 40, 64, 8, torch.int32, 2, "bf16"),    # 8 token rows; E not a multiple of 32
    (True, 8, 12, 96, 4, torch.int32, 3, "f32r"),     # Gemma mode: the extra rows take x as given
    (False, 1, 3, 8 * (4 * 128 + 3), 2, torch.int64, 1, "f32"),  # rows longer than one group of loads
])
def test_router_matches_reference(gemma, m, e, h, k, id_dtype, n_extra, wmode):
    g = torch.Generator().manual_seed(m * 100 + e + gemma)
    x = (torch.randn(m, h, generator=g) * 2).bfloat16()
    w = (torch.randn(e, h, generator=g) * h ** -0.5 * 3).bfloat16()
    scale = (torch.rand(h, generator=g) + 0.5).bfloat16() if gemma else None
    pes = (torch.rand(e, generator=g) + 0.5).bfloat16() if gemma else None
    xw = (torch.randn(n_extra, h, generator=g) * h ** -0.5).bfloat16() if n_extra else None
    wdt = torch.bfloat16 if wmode == "bf16" else torch.float32
    rnd = wmode == "f32r"
    ws = router_workspace(e, "cpu")
    ws.logits.fill_(float("nan"))
    ids = torch.full((m, k), -5, dtype=id_dtype)
    wts = torch.full((m, k), float("nan"), dtype=wdt)
    xo = torch.full((m, n_extra), float("nan")) if n_extra else None
    extra = dict(extra_weight=xw, extra_out=xo, round_weights_bf16=rnd)
    route(x, w, ids, wts, top_k=k, workspace=ws, norm_scale=scale, per_expert_scale=pes, **extra)
    assert ws.counter.item() == 0

    xin = rms_norm(x, None, 1e-6) * scale * (h ** -0.5) if gemma else x
    logits = torch.nn.functional.linear(xin, w)
    assert (ws.logits[: m * e].view(m, e) != logits.float()).float().mean() < 0.02  # fp32-sum order only
    ids_exp, w_exp = _expected(ws.logits[: m * e].view(m, e), k)
    assert torch.equal(ids.long(), ids_exp)
    if gemma:
        w_exp = w_exp * pes.double()[ids_exp]
    tol = 1e-6 if wmode == "f32" else 8e-3
    assert torch.allclose(wts.double(), w_exp, rtol=tol, atol=0)
    if rnd:
        assert _is_bf16(wts)
    if n_extra:  # bf16(x·extra_weightᵀ), to the fp32 summation order: at most one bf16 ulp off
        xe = torch.nn.functional.linear(x.double(), xw.double())
        assert _is_bf16(xo)
        assert torch.allclose(xo.double(), xe, rtol=2 ** -7, atol=1e-30)

    # the module's torch reference (torch.topk) picks the same experts and weights
    ids_r = torch.empty_like(ids)
    wts_r = torch.empty_like(wts)
    xo_r = torch.empty_like(xo) if n_extra else None
    extra_r = dict(extra, extra_out=xo_r)
    route_ref(x, w, ids_r, wts_r, top_k=k, norm_scale=scale, per_expert_scale=pes, **extra_r)
    assert torch.equal(ids_r.sort(-1).values, ids.sort(-1).values)
    assert torch.allclose(wts_r.double().sort(-1).values, wts.double().sort(-1).values, rtol=tol, atol=0)
    if n_extra:
        assert torch.allclose(xo_r.double(), xo.double(), rtol=2 ** -7, atol=1e-30)
    # ... and is the engine's router code (imp_core rms_norm + softmax_topk), bit for bit
    ids_e = torch.empty_like(ids)
    wts_e = torch.empty_like(wts)
    xo_e = torch.empty_like(xo) if n_extra else None
    route_engine(x, w, ids_e, wts_e, top_k=k, norm_scale=scale, per_expert_scale=pes, **dict(extra, extra_out=xo_e))
    assert torch.equal(ids_e, ids_r) and torch.equal(wts_e, wts_r)
    if n_extra:
        assert torch.equal(xo_e, xo_r)


def test_router_rounded_fp32_weights_are_the_bf16_ones():
    """round_weights_bf16 with fp32 weights stores exactly what bf16 weights copied to fp32 hold
    (Qwen's w_f32.copy_(w_bf16)); the workspace is reused across launches."""
    g = torch.Generator().manual_seed(7)
    m, e, h, k = 2, 20, 64, 6
    x = (torch.randn(m, h, generator=g) * 2).bfloat16()
    w = (torch.randn(e, h, generator=g) * h ** -0.5 * 3).bfloat16()
    ws = router_workspace(e, "cpu")
    out = {}
    for mode in ("bf16", "f32", "f32r"):
        ids = torch.full((m, k), -5, dtype=torch.int32)
        wts = torch.full((m, k), float("nan"), dtype=torch.bfloat16 if mode == "bf16" else torch.float32)
        route(x, w, ids, wts, top_k=k, workspace=ws, round_weights_bf16=mode == "f32r")
        assert ws.counter.item() == 0
        out[mode] = ids, wts
    assert torch.equal(out["bf16"][0], out["f32"][0]) and torch.equal(out["bf16"][0], out["f32r"][0])
    assert torch.equal(out["f32r"][1], out["bf16"][1].float())
    assert torch.equal(out["f32r"][1], out["f32"][1].bfloat16().float())
    assert not torch.equal(out["f32r"][1], out["f32"][1])


def test_router_ties_pick_lower_ids():
    """Equal logits (identical weight rows): the lower expert id first, across lanes and slots."""
    g = torch.Generator().manual_seed(3)
    e, h, k = 64, 64, 8
    x0 = torch.randn(h, generator=g).bfloat16()
    x = torch.stack([x0, -x0])
    v = (x0.float() / 16).bfloat16()
    top = [3, 7, 35, 36, 40, 60]  # lanes 3, 7, 3, 4, 8, 28 of slots 0 and 1
    w = torch.stack([v if i in top else (v.float() * 0.5).bfloat16() for i in range(e)])
    ws = router_workspace(e, "cpu")
    ids = torch.full((2, k), -5, dtype=torch.int64)
    wts = torch.full((2, k), float("nan"))
    xo = torch.full((2, 1), float("nan"))
    route(x, w, ids, wts, top_k=k, workspace=ws, extra_weight=w[3:4], extra_out=xo)
    assert ids.tolist() == [top + [0, 1], [0, 1, 2, 4, 5, 6, 8, 9]]
    lg = ws.logits[: 2 * e].view(2, e)
    assert torch.equal(xo[:, 0], lg[:, 3])  # same row, same x: the same arithmetic
    assert len(set(lg[0, top].tolist())) == 1 and len(set(lg[1].tolist())) == 2
    assert len(set(wts[0, :6].tolist())) == 1 and wts[0, 6] == wts[0, 7] and len(set(wts[1].tolist())) == 1
    ids_exp, w_exp = _expected(lg, k)
    assert torch.equal(ids, ids_exp)
    assert torch.allclose(wts.double(), w_exp, rtol=1e-6, atol=0)


def test_router_bad_args():
    x = torch.randn(1, 64).bfloat16()
    w = torch.randn(16, 64).bfloat16()
    ws = router_workspace(16, "cpu")
    ok = dict(top_k=4, workspace=ws)
    with pytest.raises(KernelError):
        route(x, w, torch.empty(1, 4, dtype=torch.int16), torch.empty(1, 4).bfloat16(), **ok)
    with pytest.raises(KernelError):
        route(torch.randn(9, 64).bfloat16(), w, torch.empty(9, 4, dtype=torch.int32), torch.empty(9, 4), **ok)
    with pytest.raises(KernelError):
        route(x, w, torch.empty(1, 4, dtype=torch.int32), torch.empty(1, 4), top_k=4, workspace=ws,
              norm_scale=torch.ones(64).bfloat16())
    ids, wts = torch.empty(1, 4, dtype=torch.int32), torch.empty(1, 4)
    with pytest.raises(KernelError):  # extra_weight without extra_out
        route(x, w, ids, wts, extra_weight=torch.randn(1, 64).bfloat16(), **ok)
    with pytest.raises(KernelError):  # extra_out not [M, R]
        route(x, w, ids, wts, extra_weight=torch.randn(2, 64).bfloat16(), extra_out=torch.empty(1, 1), **ok)
    with pytest.raises(KernelError):  # extra_out not fp32
        route(x, w, ids, wts, extra_weight=torch.randn(1, 64).bfloat16(), extra_out=torch.empty(1, 1).bfloat16(),
              **ok)
    with pytest.raises(KernelError):
        route(x, w, ids, wts, extra_weight=torch.randn(MAX_EXTRA + 1, 64).bfloat16(),
              extra_out=torch.empty(1, MAX_EXTRA + 1), **ok)
