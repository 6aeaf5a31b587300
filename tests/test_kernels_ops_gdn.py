"""Gated DeltaNet decode step (imp_kernels.gdn_decode) under the CUDA simulator, against the
module's own reference and against imp_core's conv / recurrent rule / gated norm
(``kernel_oracles.gdn_decode_imp_core``)."""

from kernels_sim import rel_err, sim_skip  # noqa: I001  (must precede imp_kernels)

import pytest
import torch

from imp_kernels.errors import KernelError
from imp_kernels.gdn_decode import DK, gdn_decode, gdn_decode_ref, gdn_decode_workspace
from kernel_oracles import gdn_decode_imp_core

pytestmark = sim_skip


def _inputs(bsz, hk, hv, dv, kconv, kc, seed):
    g = torch.Generator().manual_seed(seed)
    c = 2 * hk * DK + hv * dv
    r = lambda *s, sc=1.0: (torch.randn(*s, generator=g) * sc)  # noqa: E731
    return dict(
        mixed=r(bsz, c, sc=2.0).bfloat16(), conv_state=r(bsz, c, kc, sc=2.0).bfloat16(),
        conv_w=r(c, kconv, sc=0.5).bfloat16(), a=r(bsz, hv).bfloat16(), b=r(bsz, hv).bfloat16(),
        a_log=r(hv, sc=0.5).float(), dt_bias=r(hv, sc=0.5).bfloat16().float(), z=r(bsz, hv * dv).bfloat16(),
        norm_w=(r(dv, sc=0.2) + 1.0).bfloat16(), state=r(bsz, hv, DK, dv, sc=0.3).float(),
        out=torch.full((bsz, hv * dv), float("nan")).bfloat16())


def _clone(d):
    return {k: v.clone() for k, v in d.items()}


@pytest.mark.parametrize("bsz,hk,hv,dv,kc,steps", [
    (1, 1, 1, 64, 3, 2),  # half the lanes idle (dv < 128), two steps
    (1, 1, 2, 32, 3, 1),  # two value heads per key head (repeat_interleave; the ticket picks the shifter)
    (2, 1, 1, 32, 4, 1),  # batch 2, transformers' 4-column conv state
    (1, 1, 1, 160, 3, 1),  # two column chunks, the second partial
])
def test_gdn_decode_matches_references(bsz, hk, hv, dv, kc, steps):
    inp = _inputs(bsz, hk, hv, dv, 4, kc, seed=bsz * 10 + hv + kc)
    ws = gdn_decode_workspace(bsz, hk, "cpu")
    got, ref = _clone(inp), _clone(inp)
    gdn_decode(**got, eps=1e-6, n_k_heads=hk, workspace=ws)
    gdn_decode_ref(**ref, eps=1e-6, n_k_heads=hk)
    assert torch.equal(got["conv_state"], ref["conv_state"])
    assert rel_err(got["state"], ref["state"]) < 1e-4
    assert rel_err(got["out"], ref["out"]) < 1e-2
    assert torch.equal(ws.counters, torch.zeros_like(ws.counters))  # tickets reset for the next step
    if kc == 3:  # imp_core's own decode path (K-1 conv columns) gives the same step
        core = _clone(inp)
        gdn_decode_imp_core(**core, eps=1e-6, n_k_heads=hk)
        assert rel_err(got["state"], core["state"]) < 1e-4
        assert rel_err(got["out"], core["out"]) < 1e-2

    if steps == 1:
        return
    # a second step from the updated states (the tickets and the shifted conv state are reused)
    step2 = _inputs(bsz, hk, hv, dv, 4, kc, seed=99)
    for k in ("mixed", "a", "b", "z"):
        got[k], ref[k] = step2[k].clone(), step2[k].clone()
    gdn_decode(**got, eps=1e-6, n_k_heads=hk, workspace=ws)
    gdn_decode_ref(**ref, eps=1e-6, n_k_heads=hk)
    assert torch.equal(got["conv_state"], ref["conv_state"])
    assert rel_err(got["state"], ref["state"]) < 1e-4
    assert rel_err(got["out"], ref["out"]) < 1e-2


def test_gdn_reference_matches_imp_core():
    """The module's reference agrees with imp_core.layers (the Qwen plugin's decode path)."""
    inp = _inputs(1, 2, 4, 64, 4, 3, seed=7)
    ref, core = _clone(inp), _clone(inp)
    gdn_decode_ref(**ref, eps=1e-6, n_k_heads=2)
    gdn_decode_imp_core(**core, eps=1e-6, n_k_heads=2)
    assert torch.equal(core["conv_state"], ref["conv_state"])
    assert rel_err(ref["state"], core["state"]) < 1e-5
    assert rel_err(ref["out"], core["out"]) < 1e-2


def test_gdn_bad_args():
    inp = _inputs(1, 2, 4, 64, 4, 3, seed=1)
    ws = gdn_decode_workspace(1, 2, "cpu")
    with pytest.raises(KernelError):
        gdn_decode(**inp, eps=1e-6, n_k_heads=3, workspace=ws)
    with pytest.raises(KernelError):
        gdn_decode(**inp, eps=1e-6, n_k_heads=2, workspace=None)
    bad = dict(inp, state=inp["state"].double())
    with pytest.raises(KernelError):
        gdn_decode(**bad, eps=1e-6, n_k_heads=2, workspace=ws)
