"""Qwen3.5/3.6 pieces against transformers' own modules: interleaved mRoPE collapses to plain RoPE
for text-only positions, partial rotation of the first 64 of 256 dims, the (1+w) norm, and the
per-head query/gate interleave of q_proj. Exact (bitwise) equality is expected for each."""

from __future__ import annotations

import pytest
import torch

from imp_core.layers.rope import Rotary, apply_rotary, default_inv_freq
from imp_qwen36.attention import split_query_gate, zero_centred_norm
from imp_qwen36.presets import QWEN3_6_35B_A3B

ROPE = QWEN3_6_35B_A3B["rope_parameters"]


def _hf_rotary():
    import transformers as tf
    from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import Qwen3_5MoeTextRotaryEmbedding

    cfg = tf.Qwen3_5MoeTextConfig(head_dim=256, rope_parameters=dict(ROPE))
    return Qwen3_5MoeTextRotaryEmbedding(cfg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_interleaved_mrope_equals_plain_rope_for_text_positions(dtype):
    hf = _hf_rotary()
    assert hf.mrope_section == [11, 11, 10] and hf.inv_freq.numel() == 32
    positions = torch.cat((torch.arange(0, 300), torch.tensor([4095, 65536, 262143])))
    x = torch.zeros(1, 1, dtype=dtype)
    hf_cos, hf_sin = hf(x, positions[None])  # text-only: the t/h/w rows are all equal
    ours = Rotary(default_inv_freq(ROPE["rope_theta"], 64))
    cos, sin = ours.cos_sin(positions, dtype)
    assert cos.shape == (positions.numel(), 64)
    assert torch.equal(hf_cos[0], cos) and torch.equal(hf_sin[0], sin)
    # the check has teeth: with distinct h/w rows (image tokens) mRoPE is no longer plain RoPE
    vision = torch.stack((positions, positions // 2, positions % 7))[:, None]
    v_cos, _ = hf(x, vision)
    assert not torch.equal(v_cos[0], cos)


def test_partial_rotation_of_the_first_dims_matches_transformers():
    from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import apply_rotary_pos_emb

    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 10, 256, generator=g)
    k = torch.randn(1, 2, 10, 256, generator=g)
    cos, sin = Rotary(default_inv_freq(1e7, 64)).cos_sin(torch.arange(5, 15), torch.float32)
    ref_q, ref_k = apply_rotary_pos_emb(q, k, cos[None], sin[None])
    assert torch.equal(apply_rotary(q, cos, sin), ref_q)
    assert torch.equal(apply_rotary(k, cos, sin), ref_k)
    assert torch.equal(ref_q[..., 64:], q[..., 64:])  # dims 64..255 pass through


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_zero_centred_norm_matches_transformers(dtype):
    from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import Qwen3_5MoeRMSNorm

    g = torch.Generator().manual_seed(1)
    ref = Qwen3_5MoeRMSNorm(64, eps=1e-6).to(dtype)
    with torch.no_grad():
        ref.weight.copy_(0.3 * torch.randn(64, generator=g))
    x = (3 * torch.randn(5, 64, generator=g)).to(dtype)
    with torch.no_grad():
        expected = ref(x)
    assert torch.equal(zero_centred_norm(ref.weight.detach(), 1e-6)(x), expected)


def test_query_and_gate_are_interleaved_per_head():
    heads, d = 3, 4
    # row r of q_proj's output: head r // 2d, gate if (r % 2d) >= d
    qg = torch.arange(2 * heads * d, dtype=torch.float32).view(1, 1, -1)
    q, gate = split_query_gate(qg, heads, d)
    assert q.shape == (1, 1, heads, d) and gate.shape == (1, 1, heads * d)
    for h in range(heads):
        assert q[0, 0, h].tolist() == list(range(2 * h * d, 2 * h * d + d))
        assert gate[0, 0, h * d:(h + 1) * d].tolist() == list(range(2 * h * d + d, 2 * h * d + 2 * d))
