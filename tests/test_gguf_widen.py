"""Phase 3a's exact widening of GGUF Q4_0 / Q5_0 to Q8_0: the same values, block for block, on
bytes written by imp's GGUF quantizer (gguf-py's formulas)."""

from __future__ import annotations

import pytest
import torch

from imp_core.quant.gguf_blocks import dequant_gguf
from imp_core.quant.gguf_quantize import quantize_gguf
from imp_core.quant.gguf_widen import widen_to_q8_0


@pytest.mark.parametrize("qtype", ["Q4_0", "Q5_0"])
def test_widened_blocks_decode_to_the_same_values(qtype):
    w = torch.randn(24, 96, generator=torch.Generator().manual_seed(3)) * 0.05
    w[0, :32] = 0.0  # a block whose scale is zero
    raw = torch.from_numpy(quantize_gguf(w, qtype))
    wide = widen_to_q8_0(raw, qtype)
    assert wide.shape == (24, 96 // 32 * 34)
    original = dequant_gguf(raw, qtype, (24, 96))
    assert torch.equal(dequant_gguf(wide, "Q8_0", (24, 96)), original)
    assert original.abs().sum() > 0  # not a trivially zero tensor


def test_phase_3a_says_what_it_widens():
    from imp_core.plugin import policy
    from imp_core.plugin.plan_types import ModelInfo
    from imp_core.settings.resolve import Settings

    info = ModelInfo(family="f", architecture="A", num_layers=1, hidden_size=8, vocab_size=8,
                     layer_kinds=("attention",), attention_layers=(),
                     quant_formats=frozenset({"gguf:Q4_K", "gguf:Q5_0", "gguf:Q2_K"}))
    d = policy.core_phase_decision("3a", info, Settings(), "cuda", True)
    assert d.enabled
    assert "gguf:Q5_0 widened exactly to gguf:Q8_0" in d.reason and "gguf:Q2_K to bf16" in d.reason
