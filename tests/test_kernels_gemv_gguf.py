"""GGUF GEMV kernels (Q8_0, Q4_K, Q6_K on native blocks) vs references, under the CUDA simulator."""

from kernels_sim import rel_err, sim_skip  # noqa: I001  (must precede imp_kernels)

import pytest
import torch

from imp_core.quant import dequant_gguf, quantize_gguf
from imp_kernels.gemv_gguf import gemv_gguf, gemv_gguf_ref
from imp_kernels.gguf_common import gguf_device_buffer

pytestmark = sim_skip


@pytest.mark.parametrize("qtype,n,k,m", [("Q8_0", 9, 1088, 2), ("Q4_K", 9, 512, 1), ("Q6_K", 5, 1280, 2)])
def test_gemv_gguf_matches_reference(qtype, n, k, m):
    g = torch.Generator().manual_seed(len(qtype) + n + k)
    w = torch.randn(n, k, generator=g) * 0.1
    raw = torch.from_numpy(quantize_gguf(w, qtype)).reshape(-1)
    buf = gguf_device_buffer(raw)
    x = torch.randn(m, k, generator=g).bfloat16()
    res = torch.randn(m, n, generator=g).bfloat16()
    out = torch.full((m, n), float("nan"))
    gemv_gguf(x, buf, qtype, n, out, residual=res)
    wf = dequant_gguf(raw, qtype, (n, k), dtype=torch.float64)
    ref = x.double() @ wf.t() + res.double()
    assert rel_err(out, ref) < 1e-4
    out2 = torch.full_like(out, float("nan"))
    gemv_gguf_ref(x, buf, qtype, n, out2, residual=res)
    assert rel_err(out2, ref) < 1e-5
