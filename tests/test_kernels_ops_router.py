"""MoE router kernel (imp_kernels.router) under the CUDA simulator: Qwen and Gemma routers."""

from kernels_sim import sim_skip  # noqa: I001  (must precede imp_kernels)

import pytest
import torch

from imp_core.layers.norms import rms_norm
from imp_kernels.errors import KernelError
from imp_kernels.router import route, route_ref, router_workspace
from kernel_oracles import route_engine

pytestmark = sim_skip


def _expected(logits, k):
    """top-k by (probability desc, id asc) from bf16 logits, renormalised, in float64."""
    p = torch.softmax(logits.double(), dim=-1)
    ids = torch.stack([torch.tensor(sorted(range(p.shape[1]), key=lambda e: (-p[m, e].item(), e))[:k])
                       for m in range(p.shape[0])])
    w = p.gather(1, ids)
    return ids, w / w.sum(-1, keepdim=True)


@pytest.mark.parametrize("gemma,m,e,h,k,id_dtype", [
    (False, 1, 24, 64, 8, torch.int32),
    (False, 3, 10, 64, 4, torch.int64),   # E not a multiple of the 4 experts per block
    (True, 2, 16, 96, 6, torch.int64),
])
def test_router_matches_reference(gemma, m, e, h, k, id_dtype):
    g = torch.Generator().manual_seed(m * 100 + e + gemma)
    x = (torch.randn(m, h, generator=g) * 2).bfloat16()
    w = (torch.randn(e, h, generator=g) * h ** -0.5 * 3).bfloat16()
    scale = (torch.rand(h, generator=g) + 0.5).bfloat16() if gemma else None
    pes = (torch.rand(e, generator=g) + 0.5).bfloat16() if gemma else None
    wdt = torch.float32 if gemma else torch.bfloat16
    ws = router_workspace(e, "cpu")
    ws.logits.fill_(float("nan"))
    ids = torch.full((m, k), -5, dtype=id_dtype)
    wts = torch.full((m, k), float("nan"), dtype=wdt)
    route(x, w, ids, wts, top_k=k, workspace=ws, norm_scale=scale, per_expert_scale=pes)
    assert ws.counter.item() == 0

    xin = rms_norm(x, None, 1e-6) * scale * (h ** -0.5) if gemma else x
    logits = torch.nn.functional.linear(xin, w)
    assert (ws.logits[: m * e].view(m, e) != logits.float()).float().mean() < 0.02  # fp32-sum order only
    ids_exp, w_exp = _expected(ws.logits[: m * e].view(m, e), k)
    assert torch.equal(ids.long(), ids_exp)
    if gemma:
        w_exp = w_exp * pes.double()[ids_exp]
    tol = 1e-6 if wdt == torch.float32 else 8e-3
    assert torch.allclose(wts.double(), w_exp, rtol=tol, atol=0)

    # the module's torch reference (torch.topk) picks the same experts and weights
    ids_r = torch.empty_like(ids)
    wts_r = torch.empty_like(wts)
    route_ref(x, w, ids_r, wts_r, top_k=k, norm_scale=scale, per_expert_scale=pes)
    assert torch.equal(ids_r.sort(-1).values, ids.sort(-1).values)
    assert torch.allclose(wts_r.double().sort(-1).values, wts.double().sort(-1).values, rtol=tol, atol=0)
    # ... and is the engine's router code (imp_core rms_norm + softmax_topk), bit for bit
    ids_e = torch.empty_like(ids)
    wts_e = torch.empty_like(wts)
    route_engine(x, w, ids_e, wts_e, top_k=k, norm_scale=scale, per_expert_scale=pes)
    assert torch.equal(ids_e, ids_r) and torch.equal(wts_e, wts_r)


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
