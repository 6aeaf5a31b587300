"""Tensor-core GGUF MoE GEMV (moe_gguf_tc) vs references, under the CUDA simulator."""

from kernels_sim import rel_err, sim_skip  # noqa: I001  (must precede imp_kernels)

import pytest
import torch

from imp_core.quant import dequant_gguf, quantize_gguf
from imp_kernels.errors import KernelError
from imp_kernels.moe_common import SILU, GELU_TANH, act_ref, scratch_shape
from imp_kernels.moe_gguf_tc import experts_tc_tile, moe_gguf_tc, moe_gguf_tc_ref

pytestmark = sim_skip


def _stack(g, q, e, n, k):
    w = torch.randn(e, n, k, generator=g) * 0.05
    raw = torch.from_numpy(quantize_gguf(w.reshape(e * n, k), q)).reshape(-1)
    return raw, experts_tc_tile(raw, q, e, n, k)


# small enough for the simulator: K-quant blocks need K % 256, so each case puts them on one side
@pytest.mark.parametrize("gq,dq,e,hdim,inter,sh_inter,k,m,act,warps", [
    ("Q4_K", "Q8_0", 3, 256, 32, 64, 2, 1, SILU, 1),        # q4 gate/up, q8 down; a wider shared expert + logit
    ("Q8_0", "Q4_K", 2, 32, 256, 256, 1, 1, SILU, 2),       # q8 gate/up, q4 down
    ("Q8_0", "Q8_0", 4, 64, 32, 64, 2, 2, GELU_TANH, 2),    # two tokens
])
def test_moe_gguf_tc_matches_references(gq, dq, e, hdim, inter, sh_inter, k, m, act, warps):
    g = torch.Generator().manual_seed(e * 10 + m)
    raws, stacks = zip(*(_stack(g, q, ne, n, kk) for q, ne, n, kk in
                         ((gq, e, inter, hdim), (gq, e, inter, hdim), (dq, e, hdim, inter),
                          (gq, 1, sh_inter, hdim), (gq, 1, sh_inter, hdim), (dq, 1, hdim, sh_inter))))
    x = torch.randn(m, hdim, generator=g).bfloat16()
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(m)]).to(torch.int32)
    wts = torch.rand(m, k, generator=g)
    logit = torch.randn(m, generator=g) if gq == "Q4_K" else None  # with and without the shared gate
    res = torch.randn(m, hdim, generator=g).bfloat16()
    h = torch.full(scratch_shape(m, k, inter, sh_inter), float("nan"))
    out = torch.full((m, hdim), float("nan"), dtype=torch.bfloat16)
    kw = dict(activation=act, shared=stacks[3:], shared_gate_logit=logit, residual=res, inter=inter,
              shared_inter=sh_inter)
    moe_gguf_tc(x, ids, wts, *stacks[:3], out, h, warps_gu=warps, warps_dn=warps, **kw)
    mine = torch.empty_like(out)
    moe_gguf_tc_ref(x, ids, wts, *stacks[:3], mine, torch.empty_like(h), **kw)
    assert rel_err(out, mine.float()) < 8e-3

    def deq(i, ne, n, kk):
        return dequant_gguf(raws[i], (gq, gq, dq, gq, gq, dq)[i], (ne * n, kk), dtype=torch.float64).view(ne, n, kk)
    wg, wu, wd = deq(0, e, inter, hdim), deq(1, e, inter, hdim), deq(2, e, hdim, inter)
    sg, su, sd = deq(3, 1, sh_inter, hdim)[0], deq(4, 1, sh_inter, hdim)[0], deq(5, 1, hdim, sh_inter)[0]
    ref = res.double().clone()
    for mi in range(m):
        xm = x[mi].double()
        for j in range(k):
            ex = int(ids[mi, j])
            ref[mi] += wts[mi, j].double() * (wd[ex] @ (act_ref(wg[ex] @ xm, act) * (wu[ex] @ xm)))
        coef = torch.sigmoid(logit[mi].double()) if logit is not None else 1.0
        ref[mi] += coef * (sd @ (act_ref(sg @ xm, act) * (su @ xm)))
    assert rel_err(out, ref) < 1e-2


def test_moe_gguf_tc_rejects_mixed_gate_and_up_kinds():
    g = torch.Generator().manual_seed(1)
    _, gate = _stack(g, "Q4_K", 2, 32, 256)
    _, up = _stack(g, "Q8_0", 2, 32, 256)
    _, down = _stack(g, "Q8_0", 2, 256, 32)
    x = torch.zeros(1, 256, dtype=torch.bfloat16)
    ids = torch.zeros(1, 1, dtype=torch.int32)
    with pytest.raises(KernelError, match="up must have gate's kind"):
        moe_gguf_tc(x, ids, torch.ones(1, 1), gate, up, down, torch.empty(1, 256, dtype=torch.bfloat16),
                    torch.empty(1, 1, 32), inter=32)
