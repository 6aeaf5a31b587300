"""A GGUF Q5_0 weight on the fast path: widened to Q8_0 at bind time and run by the Q8_0 GEMV
under the CUDA simulator, against the product with the reference path's dequantised weight."""

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
    assert lin.kind == "gguf:Q8_0" and "widened to Q8_0 exactly" in lin.reason
    x = torch.randn(1, 128, generator=g).to(torch.bfloat16)
    out = torch.full((1, 32), float("nan"), dtype=torch.bfloat16)
    lin(x, out)
    ref = x.float() @ qt.dequantize(torch.float32).t()
    assert rel_err(out, ref) < 4e-3  # fp32 sums, one bf16 rounding of the output
