"""GGUF weights on the fast path under the CUDA simulator: Q5_0 widened to Q8_0 at bind time,
Q4_K / Q6_K / Q8_0 on the tensor-core GEMV (or the native blocks where f16 cannot hold their
scales), against the product with the reference path's dequantised weight."""

from __future__ import annotations

import torch

from kernels_sim import rel_err, sim_skip
from imp_core.fast.linear import bind_linear
from imp_core.quant import QTensor
from imp_core.quant.gguf_quantize import quantize_gguf

pytestmark = sim_skip


def test_q5_0_weight_binds_to_the_q8_0_kernel_and_matches():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(32, 128, generator=g) * 0.05
    qt = QTensor("gguf:Q5_0", torch.from_numpy(quantize_gguf(w, "Q5_0")), (32, 128))
    lin = bind_linear(qt)
    assert lin.kind == "gguf-tc:Q8_0" and "widened to Q8_0 exactly" in lin.reason
    x = torch.randn(1, 128, generator=g).to(torch.bfloat16)
    out = torch.full((1, 32), float("nan"), dtype=torch.bfloat16)
    lin(x, out)
    ref = x.float() @ qt.dequantize(torch.float32).t()
    assert rel_err(out, ref) < 4e-3  # fp32 sums, one bf16 rounding of the output


def test_k_quants_bind_to_the_tensor_core_gemv_unless_f16_cannot_hold_the_scales():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(1, 256, generator=g).to(torch.bfloat16)
    for gtype in ("Q4_K", "Q6_K"):
        w = torch.randn(32, 256, generator=g) * 0.05
        qt = QTensor(f"gguf:{gtype}", torch.from_numpy(quantize_gguf(w, gtype)), (32, 256))
        lin = bind_linear(qt)
        assert lin.kind == f"gguf-tc:{gtype}" and "tensor-core GEMV" in lin.reason
        out = torch.full((1, 32), float("nan"), dtype=torch.bfloat16)
        lin(x, out)
        assert rel_err(out, x.float() @ qt.dequantize(torch.float32).t()) < 4e-3
    raw = torch.from_numpy(quantize_gguf(torch.randn(32, 256, generator=g) * 0.05, "Q8_0")).clone()
    raw.view(-1, 34)[0, 0:2] = torch.tensor([0x53, 0x7B], dtype=torch.uint8)  # d = 60000: ~2^27 x the others
    qt = QTensor("gguf:Q8_0", raw, (32, 256))
    lin = bind_linear(qt)
    assert lin.kind == "gguf:Q8_0" and "native blocks" in lin.reason and "f16" in lin.reason


def test_q5_0_experts_widen_and_run_on_the_gguf_moe_kernel():
    from imp_core.fast.experts import bind_experts

    g = torch.Generator().manual_seed(6)
    e, i, h = 3, 32, 64
    gu = torch.randn(e, 2 * i, h, generator=g) * 0.05
    dn = torch.randn(e, h, i, generator=g) * 0.05
    q = lambda w: QTensor("gguf:Q5_0", torch.from_numpy(quantize_gguf(w, "Q5_0")), tuple(w.shape))  # noqa: E731
    gate_up, down = q(gu), q(dn)
    fe = bind_experts(gate_up, down, act="silu", top_k=2)
    assert "moe_gguf_tc (tensor cores" in fe.reason
    x = torch.randn(1, h, generator=g).to(torch.bfloat16)
    ids = torch.tensor([[2, 0]], dtype=torch.int32)
    wts = torch.tensor([[0.6, 0.4]])
    out = torch.full((1, h), float("nan"), dtype=torch.bfloat16)
    fe(x, ids, wts, out)
    wgu, wdn = gate_up.dequantize(torch.float32), down.dequantize(torch.float32)
    ref = torch.zeros(1, h)
    for j, ex in enumerate(ids[0].tolist()):
        a = x.float() @ wgu[ex].t()
        ref += wts[0, j] * ((torch.nn.functional.silu(a[:, :i]) * a[:, i:]) @ wdn[ex].t())
    assert rel_err(out, ref) < 4e-3


def test_k_quant_experts_whose_scales_f16_cannot_hold_keep_the_native_blocks():
    from imp_core.fast.experts import bind_experts

    g = torch.Generator().manual_seed(9)
    e, i, h = 2, 32, 256
    gu = torch.from_numpy(quantize_gguf(torch.randn(e * 2 * i, h, generator=g) * 0.05, "Q4_K")).clone()
    gu.view(-1, 144)[3, 0:2] = torch.tensor([0x00, 0x7B], dtype=torch.uint8)  # d = 57344: d * 63 > f16 max
    dn = torch.from_numpy(quantize_gguf(torch.randn(e * h, i, generator=g) * 0.05, "Q8_0"))
    fe = bind_experts(QTensor("gguf:Q4_K", gu, (e, 2 * i, h)), QTensor("gguf:Q8_0", dn, (e, h, i)), act="silu",
                      top_k=1)
    assert "moe_gguf (native blocks: Q4_K scales span" in fe.reason


def test_q5_0_shared_expert_is_widened_and_fused():
    """llama-quantize leaves a shared expert's down projection in Q5_0 at times (rows that do not
    fill a Q4_K block); it is widened like the routed stacks and rides in the same launches."""
    from imp_core.fast.experts import bind_experts

    g = torch.Generator().manual_seed(7)
    e, i, h, si = 2, 32, 32, 32
    q = lambda w, t: QTensor(f"gguf:{t}", torch.from_numpy(quantize_gguf(w, t)), tuple(w.shape))  # noqa: E731
    gate_up = q(torch.randn(e, 2 * i, h, generator=g) * 0.05, "Q8_0")
    down = q(torch.randn(e, h, i, generator=g) * 0.05, "Q8_0")
    s_gu = q(torch.randn(2 * si, h, generator=g) * 0.05, "Q8_0")
    s_dn = q(torch.randn(h, si, generator=g) * 0.05, "Q5_0")
    fe = bind_experts(gate_up, down, act="silu", top_k=1, shared=(s_gu, s_dn))
    assert fe.shared_fused and "shared expert fused" in fe.reason and "moe_gguf_tc" in fe.reason
    x = torch.randn(1, h, generator=g).to(torch.bfloat16)
    ids = torch.tensor([[1]], dtype=torch.int32)
    wts = torch.tensor([[0.7]])
    logit = torch.tensor([0.4])
    out = torch.full((1, h), float("nan"), dtype=torch.bfloat16)
    fe(x, ids, wts, out, shared_gate_logit=logit)

    def mlp(a_w, d_w, inter):
        a = x.float() @ a_w.t()
        return (torch.nn.functional.silu(a[:, :inter]) * a[:, inter:]) @ d_w.t()

    wgu, wdn = gate_up.dequantize(torch.float32), down.dequantize(torch.float32)
    ref = sum(wts[0, j] * mlp(wgu[ex], wdn[ex], i) for j, ex in enumerate(ids[0].tolist()))
    ref = ref + torch.sigmoid(logit) * mlp(s_gu.dequantize(torch.float32), s_dn.dequantize(torch.float32), si)
    assert rel_err(out, ref) < 4e-3
