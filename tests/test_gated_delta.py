"""The reusable linear-attention pieces: gated delta rule (chunked and recurrent), causal conv, gated norm.

References: an fp64 step-by-step evaluation of the textbook recurrence
S_t = exp(g_t)(I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ, o_t = S_tᵀ q_t (written independently of
both forms), and transformers 5.24's torch fallbacks (``torch_chunk_gated_delta_rule``,
``torch_recurrent_gated_delta_rule``, ``causal_conv1d_fn``, ``Qwen3_5MoeRMSNormGated``).
Tolerances are fp32 rounding over a few hundred steps: 2e-5 absolute on outputs of order 1.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from imp_core.layers.causal_conv import causal_conv1d, new_conv_state
from imp_core.layers.gated_delta import chunk_gated_delta_rule, gated_rms_norm, recurrent_gated_delta_rule

TOL = 2e-5


def _inputs(t: int, *, b: int = 2, hk: int = 2, hv: int = 4, dk: int = 16, dv: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, hk, dk, generator=g)
    k = torch.randn(b, t, hk, dk, generator=g)
    v = torch.randn(b, t, hv, dv, generator=g)
    decay = -torch.rand(b, t, hv, generator=g) * 0.5  # log-decay <= 0
    beta = torch.rand(b, t, hv, generator=g)
    s0 = torch.randn(b, hv, dk, dv, generator=g)
    return q, k, v, decay, beta, s0


def textbook(q, k, v, decay, beta, s0):
    """fp64 o_t = S_tᵀ q_t with S_t = e^{g_t}(I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ per value head."""
    q, k, v, decay, beta = (x.double() for x in (q, k, v, decay, beta))
    b, t, hk, dk = k.shape
    hv = v.shape[2]
    rep = hv // hk
    q = q / q.norm(dim=-1, keepdim=True) * dk ** -0.5  # eps 1e-6 is negligible for these norms
    k = k / k.norm(dim=-1, keepdim=True)
    out = torch.zeros(b, t, hv, v.shape[-1], dtype=torch.float64)
    state = s0.double().clone()
    eye = torch.eye(dk, dtype=torch.float64)
    for bi in range(b):
        for h in range(hv):
            s = state[bi, h]
            for i in range(t):
                kk, qq = k[bi, i, h // rep], q[bi, i, h // rep]
                s = decay[bi, i, h].exp() * (eye - beta[bi, i, h] * torch.outer(kk, kk)) @ s \
                    + beta[bi, i, h] * torch.outer(kk, v[bi, i, h])
                out[bi, i, h] = s.T @ qq
            state[bi, h] = s
    return out, state


@pytest.mark.parametrize("t", [1, 37, 64, 150])
def test_both_forms_match_the_textbook_recurrence(t):
    q, k, v, decay, beta, s0 = _inputs(t, seed=t)
    ref_o, ref_s = textbook(q, k, v, decay, beta, s0)
    for rule in (chunk_gated_delta_rule, recurrent_gated_delta_rule):
        o, s = rule(q, k, v, decay, beta, s0)
        assert o.dtype == torch.float32 and s.dtype == torch.float32 and o.shape == v.shape
        assert (o.double() - ref_o).abs().max().item() < TOL, rule.__name__
        assert (s.double() - ref_s).abs().max().item() < TOL, rule.__name__


def test_chunked_and_recurrent_agree_across_several_chunks_without_initial_state():
    q, k, v, decay, beta, _ = _inputs(200, seed=3)
    oc, sc = chunk_gated_delta_rule(q, k, v, decay, beta, None)
    orc, sr = recurrent_gated_delta_rule(q, k, v, decay, beta, None)
    assert (oc - orc).abs().max().item() < TOL
    assert (sc - sr).abs().max().item() < TOL


def test_chunked_form_continues_from_a_carried_state():
    """Two calls (70 + 130 tokens) with the state handed over equal one 200-token call."""
    q, k, v, decay, beta, s0 = _inputs(200, seed=4)
    whole, s_whole = chunk_gated_delta_rule(q, k, v, decay, beta, s0)
    first, s1 = chunk_gated_delta_rule(q[:, :70], k[:, :70], v[:, :70], decay[:, :70], beta[:, :70], s0)
    second, s2 = chunk_gated_delta_rule(q[:, 70:], k[:, 70:], v[:, 70:], decay[:, 70:], beta[:, 70:], s1)
    assert (torch.cat((first, second), 1) - whole).abs().max().item() < TOL
    assert (s2 - s_whole).abs().max().item() < TOL


def test_bf16_inputs_run_in_fp32_and_return_the_input_dtype():
    q, k, v, decay, beta, s0 = _inputs(80, seed=5)
    o16, s16 = chunk_gated_delta_rule(q.bfloat16(), k.bfloat16(), v.bfloat16(), decay, beta.bfloat16(), s0)
    o32, s32 = chunk_gated_delta_rule(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(),
                                      decay, beta.bfloat16().float(), s0)
    assert o16.dtype == torch.bfloat16 and s16.dtype == torch.float32
    assert torch.equal(o16, o32.bfloat16()) and torch.equal(s16, s32)


def test_matches_transformers_torch_fallbacks():
    from transformers.models.qwen3_5_moe import modeling_qwen3_5_moe as hf

    q, k, v, decay, beta, s0 = _inputs(100, seed=6)
    for ours, theirs in ((chunk_gated_delta_rule, hf.torch_chunk_gated_delta_rule),
                         (recurrent_gated_delta_rule, hf.torch_recurrent_gated_delta_rule)):
        o, s = ours(q, k, v, decay, beta, s0)
        ref_o, ref_s = theirs(q, k, v, g=decay, beta=beta, initial_state=s0, output_final_state=True,
                              use_qk_l2norm_in_kernel=True)
        assert (o - ref_o).abs().max().item() < 1e-6
        assert (s - ref_s).abs().max().item() < 1e-6


def test_mismatched_head_counts_are_refused():
    q, k, v, decay, beta, _ = _inputs(4, hk=3, hv=4)
    with pytest.raises(ValueError, match="multiple of key heads"):
        chunk_gated_delta_rule(q, k, v, decay, beta)


# -- causal conv ------------------------------------------------------------------------------
def _conv_reference(x, w, prior):
    """y[t, c] = Σ_j w[c, j] · x[t-K+1+j, c] with ``prior`` columns before x (fp64 loop)."""
    full = torch.cat((prior, x), -1).double()
    kernel = w.shape[1]
    t = x.shape[-1]
    y = torch.zeros(x.shape, dtype=torch.float64)
    for i in range(t):
        y[..., i] = (full[..., i:i + kernel] * w.double()).sum(-1)
    return y


def test_causal_conv_prefill_then_single_steps_continue_the_state():
    g = torch.Generator().manual_seed(7)
    b, c, k = 2, 24, 4
    w = torch.randn(c, k, generator=g)
    x = torch.randn(b, c, 30, generator=g)
    state = new_conv_state(b, c, k, dtype=torch.float32, device=torch.device("cpu"))
    assert state.shape == (b, c, k - 1)
    y_pref = causal_conv1d(x[..., :20], w, state)
    assert (y_pref.double() - _conv_reference(x[..., :20], w, torch.zeros(b, c, k - 1))).abs().max() < 1e-5
    assert torch.equal(state, x[..., 17:20])
    steps = [causal_conv1d(x[..., i:i + 1], w, state) for i in range(20, 23)]  # decode steps
    y_rest = causal_conv1d(x[..., 23:], w, state)  # a multi-token continuation
    y = torch.cat((y_pref, *steps, y_rest), -1)
    whole = _conv_reference(x, w, torch.zeros(b, c, k - 1))
    assert (y.double() - whole).abs().max().item() < 1e-5
    assert torch.equal(state, x[..., -3:])


def test_causal_conv_short_prompt_and_activation_match_transformers():
    from transformers.models.qwen3_5_moe import modeling_qwen3_5_moe as hf

    g = torch.Generator().manual_seed(8)
    w = torch.randn(16, 4, generator=g)
    for t in (2, 9):
        x = torch.randn(1, 16, t, generator=g)
        state = torch.zeros(1, 16, 3)
        ours = causal_conv1d(x, w, state, activation=F.silu)
        ref = hf.causal_conv1d_fn(x, w, None, activation="silu")
        assert (ours - ref).abs().max().item() < 1e-6
        assert torch.equal(causal_conv1d(x, w, None, activation=F.silu), ours)
    # HF's 4-column state and update step give the same decode output
    hf_state = torch.cat((torch.zeros(1, 16, 1), x[..., -3:]), -1)
    step = torch.randn(1, 16, 1, generator=g)
    ref = hf.causal_conv1d_update(step, hf_state, w, None, "silu")
    ours = causal_conv1d(step, w, state, activation=F.silu)
    assert (ours - ref).abs().max().item() < 1e-6


# -- gated output norm -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gated_rms_norm_matches_transformers(dtype):
    from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import Qwen3_5MoeRMSNormGated

    g = torch.Generator().manual_seed(9)
    norm = Qwen3_5MoeRMSNormGated(16, eps=1e-6).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(16, generator=g))
    x = torch.randn(12, 16, generator=g).to(dtype)
    z = torch.randn(12, 16, generator=g).to(dtype)
    with torch.no_grad():
        ref = norm(x, z)
    ours = gated_rms_norm(x, z, norm.weight.detach(), 1e-6)
    assert ours.dtype == dtype
    assert torch.equal(ours, ref)
