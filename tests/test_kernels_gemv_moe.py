"""NVFP4 MoE (gate_up + fused activation + weighted down, optional shared expert) under the simulator."""

from kernels_sim import rel_err, sim_skip  # noqa: I001  (must precede imp_kernels)

import pytest
import torch

from imp_core.quant import dequant_nvfp4, quantize_nvfp4
from imp_kernels.moe_nvfp4 import GELU_TANH, SILU, moe_nvfp4, moe_nvfp4_ref, moe_scratch_shape
from imp_kernels.repack import nvfp4_experts_tile

pytestmark = sim_skip


def _stack(e, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    cs, ss, gs, wf = [], [], [], []
    for _ in range(e):
        w = torch.randn(n, k, generator=g) * 0.2
        c, s, gsc = quantize_nvfp4(w)
        cs.append(c)
        ss.append(s)
        gs.append(gsc.float().reshape(()))
        wf.append(dequant_nvfp4(c, s, gsc, dtype=torch.float64))
    ct, st = nvfp4_experts_tile(cs, ss)
    return ct, st, torch.stack(gs), torch.stack(wf)


def _act(v, activation):
    return torch.nn.functional.silu(v) if activation == SILU else torch.nn.functional.gelu(v, approximate="tanh")


@pytest.mark.parametrize("m,activation,with_shared", [(2, SILU, True), (1, GELU_TANH, False)])
def test_moe_nvfp4_matches_reference(m, activation, with_shared):
    e, inter, hdim, topk = 4, 32, 64, 2
    gu_c, gu_s, gu_g, gu_w = _stack(e, 2 * inter, hdim, 1)
    dn_c, dn_s, dn_g, dn_w = _stack(e, hdim, inter, 2)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(m, hdim, generator=gen).bfloat16()
    ids = torch.stack([torch.randperm(e, generator=gen)[:topk] for _ in range(m)]).to(torch.int32)
    wts = torch.rand(m, topk, generator=gen)
    shared = logit = None
    if with_shared:
        sgc, sgs, sgg, sgw = _stack(1, 2 * inter, hdim, 3)
        sdc, sds, sdg, sdw = _stack(1, hdim, inter, 4)
        shared = (sgc, sgs, sgg, sdc, sds, sdg)
        logit = torch.randn(m, generator=gen)
    res = torch.randn(m, hdim, generator=gen).bfloat16()
    out = torch.full((m, hdim), float("nan"), dtype=torch.bfloat16)
    h = torch.full(moe_scratch_shape(m, topk, inter, with_shared), float("nan"))
    moe_nvfp4(x, ids, wts, (gu_c, gu_s, gu_g), (dn_c, dn_s, dn_g), out, h, activation=activation,
              shared=shared, shared_gate_logit=logit, residual=res)
    # independent float64 reference from the checkpoint-layout dequantisation
    ref = res.double().clone()
    for mi in range(m):
        xm = x[mi].double()
        for j in range(topk):
            ei = int(ids[mi, j])
            gu = gu_w[ei] @ xm
            hv = _act(gu[:inter], activation) * gu[inter:]
            ref[mi] += float(wts[mi, j]) * (dn_w[ei] @ hv)
        if with_shared:
            gu = sgw[0] @ xm
            hv = _act(gu[:inter], activation) * gu[inter:]
            ref[mi] += torch.sigmoid(logit[mi].double()) * (sdw[0] @ hv)
    assert rel_err(out, ref) < 1e-2
    out2 = torch.full_like(out, float("nan"))
    h2 = torch.full_like(h, float("nan"))
    moe_nvfp4_ref(x, ids, wts, (gu_c, gu_s, gu_g), (dn_c, dn_s, dn_g), out2, h2, activation=activation,
                  shared=shared, shared_gate_logit=logit, residual=res)
    assert rel_err(out2, ref) < 1e-2
    assert rel_err(h, h2) < 2e-3
