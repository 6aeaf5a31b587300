"""Tensor-core GGUF GEMV (Q4_K, Q6_K, Q8_0 re-tiled) vs references, under the CUDA simulator."""

from kernels_sim import rel_err, sim_skip  # noqa: I001  (must precede imp_kernels)

import numpy as np
import pytest
import torch

from imp_core.quant import dequant_gguf, quantize_gguf
from imp_kernels.errors import KernelError
from imp_kernels.gemv_gguf_tc import gemv_gguf_tc, gemv_gguf_tc_ref
from imp_kernels.repack_gguf import gguf_affine, tc_form, tc_tile, tc_untile_dequant

pytestmark = sim_skip


def _raw(qtype, n, k, seed, std=0.05):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * std
    return torch.from_numpy(quantize_gguf(w, qtype)).reshape(-1), g


@pytest.mark.parametrize("qtype,n,k,std", [("Q4_K", 40, 512, 0.05), ("Q6_K", 33, 256, 0.05), ("Q8_0", 40, 96, 0.05),
                                          ("Q8_0", 8, 320, 0.05),
                                          # real checkpoints' d (~1e-5) lie below f16's normal range
                                          ("Q4_K", 32, 256, 1e-3), ("Q6_K", 32, 256, 1e-3)])
def test_tiles_hold_the_gguf_weights_rounded_once_to_f16(qtype, n, k, std):
    raw, _ = _raw(qtype, n, k, n + k, std)
    assert tc_form(raw, qtype, n, k)[0] is not None
    kind, codes, scales, unscale = tc_tile(raw, qtype, n, k)
    got = tc_untile_dequant(kind, codes, scales, n, k, unscale).double()
    exact = dequant_gguf(raw, qtype, (n, k), dtype=torch.float64)
    q, s, m, grp = gguf_affine(raw, qtype, n, k)
    # s and the result each rounded once to f16 (11 bits); m too for Q4_K
    size = (q.double().abs() * s.double().abs().repeat_interleave(grp, 1))
    if m is not None:
        size = size + m.double().abs().repeat_interleave(grp, 1)
    assert ((got - exact).abs() <= size * 2.0 ** -10 + 1e-12).all()
    assert (got - exact).abs().max() > 0 or qtype == "Q8_0"  # Q4_K/Q6_K scale products do round


@pytest.mark.parametrize("qtype,n,k,m,warps,out_dtype", [
    ("Q4_K", 40, 512, 1, 2, torch.bfloat16),   # 8 chunks over 2 warps: the pipeline wraps
    ("Q4_K", 24, 256, 3, 1, torch.float32),
    ("Q6_K", 33, 256, 2, 2, torch.bfloat16),
    ("Q8_0", 40, 96, 1, 1, torch.float32),     # K of 3 chunks, one warp
])
def test_gemv_gguf_tc_matches_references(qtype, n, k, m, warps, out_dtype):
    raw, g = _raw(qtype, n, k, 7 * n + k + m)
    kind, codes, scales, unscale = tc_tile(raw, qtype, n, k)
    assert unscale < 2.0 ** -10  # the scales were lifted into f16's range
    x = torch.randn(m, k, generator=g).bfloat16()
    res = torch.randn(m, n, generator=g).bfloat16()
    out = torch.full((m, n), float("nan"), dtype=out_dtype)
    gemv_gguf_tc(x, kind, codes, scales, out, unscale=unscale, residual=res, warps=warps)
    # the kernel's own arithmetic: f16 weights and activations, fp32 sums
    mine = torch.full_like(out, float("nan"))
    gemv_gguf_tc_ref(x, kind, codes, scales, mine, unscale=unscale, residual=res)
    exact = x.double() @ dequant_gguf(raw, qtype, (n, k), dtype=torch.float64).t() + res.double()
    tol = 1e-6 if out_dtype == torch.float32 else 8e-3
    assert rel_err(out, mine.double()) < tol
    assert rel_err(out, exact) < (2e-3 if out_dtype == torch.float32 else 8e-3)
    out2 = torch.full((m, n), float("nan"), dtype=out_dtype)  # no residual
    gemv_gguf_tc(x, kind, codes, scales, out2, unscale=unscale, warps=warps)
    assert rel_err(out2, (x.double() @ dequant_gguf(raw, qtype, (n, k), dtype=torch.float64).t())) < 8e-3


def test_tc_form_refuses_scales_one_f16_exponent_cannot_hold():
    raw, _ = _raw("Q8_0", 4, 64, 3)
    blocks = raw.view(-1, 34).clone()
    blocks[1, 0:2] = torch.from_numpy(np.array([60000.0], dtype=np.float16).view(np.uint8))  # 2^27 x the others
    kind, why = tc_form(blocks.reshape(-1), "Q8_0", 4, 64)
    assert kind is None and "f16" in why
    blocks[1, 0:2] = torch.from_numpy(np.array([np.inf], dtype=np.float16).view(np.uint8))
    assert "not finite" in tc_form(blocks.reshape(-1), "Q8_0", 4, 64)[1]
    assert tc_form(raw, "Q5_K", 4, 256)[0] is None


def test_gemv_gguf_tc_rejects_mismatched_tiles():
    raw, _ = _raw("Q4_K", 32, 256, 5)
    kind, codes, scales, _ = tc_tile(raw, "Q4_K", 32, 256)
    x = torch.zeros(1, 256, dtype=torch.bfloat16)
    with pytest.raises(KernelError, match="scales"):
        gemv_gguf_tc(x, "q8", codes, scales, torch.empty(1, 32, dtype=torch.bfloat16))
    with pytest.raises(KernelError, match="K="):
        gemv_gguf_tc(torch.zeros(1, 512, dtype=torch.bfloat16), kind, codes, scales,
                     torch.empty(1, 32, dtype=torch.bfloat16))
