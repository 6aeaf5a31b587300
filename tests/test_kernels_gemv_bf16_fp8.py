"""BF16 and FP8 GEMV kernels vs torch references, under the CUDA simulator (tiny shapes)."""

from kernels_sim import rel_err, sim_skip  # noqa: I001  (must precede imp_kernels)

import pytest
import torch

from imp_core.quant import dequant_fp8
from imp_kernels.gemv_bf16 import gemv_bf16, gemv_bf16_ref, linear_bf16
from imp_kernels.gemv_fp8 import gemv_fp8, gemv_fp8_ref
from imp_kernels.repack import fp8_tile, fp8_untile

pytestmark = sim_skip


@pytest.mark.parametrize("m,n,k,out_dtype,with_res", [
    (1, 40, 72, torch.bfloat16, True),
    (5, 33, 64, torch.float32, False),
])
def test_gemv_bf16_matches_reference(m, n, k, out_dtype, with_res):
    g = torch.Generator().manual_seed(m * 100 + n)
    x = torch.randn(m, k, generator=g).bfloat16()
    w = (torch.randn(n, k, generator=g) * 0.1).bfloat16()
    res = torch.randn(m, n, generator=g).bfloat16() if with_res else None
    out = torch.full((m, n), float("nan"), dtype=out_dtype)
    gemv_bf16(x, w, out, residual=res)
    ref = x.double() @ w.double().t() + (res.double() if res is not None else 0)
    tol = 1e-2 if out_dtype == torch.bfloat16 else 1e-5
    assert rel_err(out, ref) < tol
    out2 = torch.full_like(out, float("nan"))
    gemv_bf16_ref(x, w, out2, residual=res)
    assert rel_err(out2, ref) < tol
    out3 = torch.full((m, n), float("nan"), dtype=torch.bfloat16)
    linear_bf16(x, w, out3, residual=res)
    assert rel_err(out3, ref) < 1e-2


def _fp8_weight(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g) * 40).clamp(-440, 440).to(torch.float8_e4m3fn)


@pytest.mark.parametrize("gran,n,k", [("tensor", 40, 96), ("channel", 64, 160), ("block", 160, 288)])
def test_gemv_fp8_matches_reference(gran, n, k):
    m = 3
    g = torch.Generator().manual_seed(3)
    w = _fp8_weight(n, k, 11)
    if gran == "tensor":
        scale = torch.rand(1, generator=g) * 0.01 + 0.001
    elif gran == "channel":
        scale = torch.rand(n, generator=g) * 0.01 + 0.001
    else:
        scale = torch.rand(-(-n // 128), -(-k // 128), generator=g) * 0.01 + 0.001
    ct = fp8_tile(w)
    assert torch.equal(fp8_untile(ct, n, k), w.view(torch.uint8))
    x = torch.randn(m, k, generator=g).bfloat16()
    res = torch.randn(m, n, generator=g).bfloat16()
    out = torch.full((m, n), float("nan"), dtype=torch.float32)
    gemv_fp8(x, ct, scale, out, residual=res)
    wf = dequant_fp8(w, scale, dtype=torch.float64, granularity=gran if gran != "channel" else None)
    ref = x.double() @ wf.t() + res.double()
    assert rel_err(out, ref) < 1e-3
    out2 = torch.full_like(out, float("nan"))
    gemv_fp8_ref(x, ct, scale, out2, residual=res)
    assert rel_err(out2, ref) < 1e-3


def test_module_warmups_run():
    from imp_kernels import gemv_bf16 as b, gemv_fp8 as f

    b.warmup("cpu")
    f.warmup("cpu")


def test_gemv_fp8_register_variant_matches_default():
    """The benchmark's build with another register cap computes the same sums in the same order
    (block scales, so the prefetched per-chunk scale is exercised); unknown names are refused."""
    from imp_kernels.errors import KernelError

    g = torch.Generator().manual_seed(11)
    n, k = 32, 256
    w = (torch.randn(n, k, generator=g) * 30).clamp(-440, 440).to(torch.float8_e4m3fn)
    scale = torch.rand(1, 2, generator=g) * 0.004 + 0.001
    ct = fp8_tile(w)
    x = torch.randn(1, k, generator=g).bfloat16()
    want = torch.full((1, n), float("nan"), dtype=torch.float32)
    gemv_fp8(x, ct, scale, want, warps=2)
    got = torch.full_like(want, float("nan"))
    gemv_fp8(x, ct, scale, got, warps=2, variant="r80")
    assert torch.equal(got, want)
    ref = x.double() @ (w.double() * scale.double().repeat_interleave(128, 1)[:, :k]).t()
    assert rel_err(got, ref) < 2e-3
    with pytest.raises(KernelError, match="unknown variant"):
        gemv_fp8(x, ct, scale, got, variant="d9")
