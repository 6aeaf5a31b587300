"""The pieces the MoE format loaders are built from, on random weights against plain dequantise-then-op:
per-expert stacking and gate|up concatenation kept packed (imp_core.layers.expert_stack), and the
qwen35moe value-head un-tiling (rows and packed columns) against llama.cpp's own reorder formula."""

from __future__ import annotations

import pytest
import torch

from imp_core.checkpoint.gguf_names import permute_rows
from imp_core.layers.expert_stack import concat_rows, stack_experts_packed
from imp_core.quant import QTensor, quantize_gguf
from imp_core.quant.fp8 import quantize_fp8
from imp_core.quant.nvfp4 import quantize_nvfp4
from imp_qwen36.gguf import expand_heads, hf_to_stored_heads, permute_columns
from tests.format_factory_moe_gguf import reorder_v_heads

GEN = torch.Generator().manual_seed(5)


def _w(*shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN) * scale


def nvfp4(w: torch.Tensor) -> QTensor:
    codes, block, g = quantize_nvfp4(w, convention="modelopt")
    return QTensor("nvfp4", codes, tuple(w.shape), scales={"block": block, "global": g})


def fp8(w: torch.Tensor, granularity: str = "tensor") -> QTensor:
    data, scale = quantize_fp8(w, granularity)
    return QTensor("fp8", data, tuple(w.shape), scales={"scale": scale}, meta={"granularity": granularity})


def gguf(w: torch.Tensor, qtype: str) -> QTensor:
    return QTensor(f"gguf:{qtype}", torch.from_numpy(quantize_gguf(w, qtype)), tuple(w.shape))


def dense(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else x.dequantize()


@pytest.mark.parametrize("make,qtype", [(nvfp4, "nvfp4"), (fp8, "fp8"), (lambda w: fp8(w, "channel"), "fp8"),
                                        (lambda w: gguf(w, "Q8_0"), "gguf:Q8_0")])
def test_per_expert_gate_up_and_down_stay_packed_with_identical_values(make, qtype):
    e, i, h = 3, 32, 64
    gates = [make(_w(i, h, scale=k + 1)) for k in range(e)]  # different scales per expert and half
    ups = [make(_w(i, h, scale=0.3 * (k + 1))) for k in range(e)]
    gate, up = stack_experts_packed(gates, torch.float32), stack_experts_packed(ups, torch.float32)
    gate_up = concat_rows(gate, up, torch.float32, name="x.gate_up_proj")
    assert isinstance(gate_up, QTensor) and gate_up.qtype == qtype and gate_up.shape == (e, 2 * i, h)
    ref = torch.stack([torch.cat((g.dequantize(), u.dequantize())) for g, u in zip(gates, ups)])
    assert torch.equal(gate_up.dequantize(), ref)
    if qtype == "nvfp4":
        assert tuple(gate_up.scales["global"].shape) == (e, 2)  # one multiplier per expert and half
    if qtype == "fp8" and gates[0].meta["granularity"] == "tensor":
        assert gate_up.meta["granularity"] == "channel"  # gate/up scales differ: one per row


def test_mixed_or_unsupported_parts_are_made_dense():
    a, b = _w(32, 64), _w(32, 64)
    cases = [(nvfp4(a), fp8(b)), (gguf(a, "Q8_0"), gguf(b, "Q5_0")), (a, nvfp4(b)),
             (nvfp4(a), nvfp4(b))]  # 2-D NVFP4 halves with different globals: no [G] form without experts
    for x, y in cases:
        out = concat_rows(x, y, torch.float32)
        assert isinstance(out, torch.Tensor) and torch.equal(out, torch.cat((dense(x), dense(y))))
    stacked = stack_experts_packed([nvfp4(a), b], torch.float32)
    assert isinstance(stacked, torch.Tensor) and torch.equal(stacked, torch.stack((nvfp4(a).dequantize(), b)))
    with_global = QTensor("gguf:Q8_0", gguf(a, "Q8_0").data, (32, 64), scales={"global": torch.tensor(2.0)})
    out = stack_experts_packed([with_global, gguf(b, "Q8_0")], torch.float32)
    assert isinstance(out, torch.Tensor)


# -- qwen35moe value heads ------------------------------------------------------------------------
@pytest.mark.parametrize("hk,hv", [(2, 4), (2, 6), (16, 32), (4, 4)])
def test_value_head_permutation_inverts_llama_cpp_reorder(hk, hv):
    d = 8
    w = _w(hv * d, 16)
    stored = reorder_v_heads(w, 0, hk, hv // hk, d)
    assert torch.equal(permute_rows(stored, expand_heads(hf_to_stored_heads(hk, hv), d)), w)
    cols = reorder_v_heads(w.T.contiguous(), 1, hk, hv // hk, d)  # out_proj: columns
    assert torch.equal(permute_columns(cols, expand_heads(hf_to_stored_heads(hk, hv), d), d), w.T)


@pytest.mark.parametrize("make,head_dim,packed", [
    (lambda w: gguf(w, "Q8_0"), 32, True), (lambda w: gguf(w, "Q5_0"), 64, True),
    (lambda w: gguf(w, "Q4_K"), 128, False), (lambda w: gguf(w, "Q8_0"), 16, False),
    (nvfp4, 16, True), (nvfp4, 8, False), (fp8, 16, True), (lambda w: fp8(w, "channel"), 16, True)])
def test_out_proj_columns_move_whole_blocks_or_are_dequantised(make, head_dim, packed):
    hk, hv = 2, 4
    w = _w(48, hv * head_dim)
    perm = expand_heads(hf_to_stored_heads(hk, hv), head_dim)
    q = make(w)
    out = permute_columns(q, perm, head_dim)
    assert isinstance(out, QTensor) == packed
    assert torch.equal(dense(out), q.dequantize()[:, perm])
