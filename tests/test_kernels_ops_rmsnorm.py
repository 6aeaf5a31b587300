"""RMSNorm kernel (imp_kernels.rmsnorm) vs its torch reference and imp_core.layers.norms under
the CUDA simulator; its post-norm epilogue (add, scale) and second weight vs the launches and
torch ops they replace, bit for bit."""

from kernels_sim import rel_err, sim_skip  # noqa: I001  (must precede imp_kernels)

import pytest
import torch

from imp_kernels.errors import KernelError
from imp_kernels.rmsnorm import rmsnorm, rmsnorm_ref, rmsnorm_threads
from kernel_oracles import rmsnorm_engine

pytestmark = sim_skip


def _bf16_ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance in bf16 units of last place between two bf16 tensors (same signs)."""
    ia = a.view(torch.int16).int()
    ib = b.view(torch.int16).int()
    return int((ia - ib).abs().max())


@pytest.mark.parametrize("rows,n,mode,offset,weighted,with_res", [
    (1, 512, "fp32", 0.0, True, False),     # Gemma plain weight
    (3, 264, "fp32", 1.0, True, True),      # Qwen zero-centred, fused residual, ragged chunks
    (2, 136, "llama", 0.0, True, True),     # Mistral: weight multiply in bf16
    (4, 64, "fp32", 0.0, False, False),     # weightless (v_norm / router input), per-head rows
    (1, 2048, "llama", 1.0, True, False),   # several chunks per thread
])
def test_rmsnorm_matches_reference(rows, n, mode, offset, weighted, with_res):
    g = torch.Generator().manual_seed(rows * 1000 + n)
    x = (torch.randn(rows, n, generator=g) * 3).bfloat16()
    w = (torch.randn(n, generator=g) * 0.5 + 0.2).bfloat16() if weighted else None
    res = (torch.randn(rows, n, generator=g) * 2).bfloat16() if with_res else None
    eps = 1e-6 if mode == "fp32" else 1e-5
    out = torch.full((rows, n), float("nan")).bfloat16()
    res_k = res.clone() if res is not None else None
    rmsnorm(x, w, out, eps=eps, mode=mode, offset=offset, residual=res_k)

    # independent float64 reference of the same rounding sequence
    h = (x.double() + res.double()).bfloat16() if res is not None else x
    hd = h.double()
    xn = hd / torch.sqrt(hd.pow(2).mean(-1, keepdim=True) + eps)
    if w is None:
        ref = xn
    elif mode == "fp32":
        ref = xn * (w.double() + offset)
    else:
        ref = xn.bfloat16().double() * (w.double() + offset).bfloat16().double()
    assert rel_err(out, ref) < 5e-3
    if res is not None:
        assert torch.equal(res_k, h)  # new residual written back exactly
    # the module's torch reference: at most one bf16 ulp apart
    out_ref = torch.full_like(out, float("nan"))
    res_r = res.clone() if res is not None else None
    rmsnorm_ref(x, w, out_ref, eps=eps, mode=mode, offset=offset, residual=res_r)
    assert _bf16_ulps(out, out_ref) <= 1
    assert (out != out_ref).float().mean() < 0.02
    # the engine's norm (imp_core.layers.norms.rms_norm) is the same math, bit for bit
    out_eng = torch.full_like(out, float("nan"))
    res_e = res.clone() if res is not None else None
    rmsnorm_engine(x, w, out_eng, eps=eps, mode=mode, offset=offset, residual=res_e)
    assert torch.equal(out_eng, out_ref)
    assert _bf16_ulps(out, out_eng) <= 1


def test_rmsnorm_in_place_and_bad_args():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 96, generator=g).bfloat16()
    w = torch.randn(96, generator=g).bfloat16()
    ref = torch.empty_like(x)
    rmsnorm_ref(x, w, ref, eps=1e-6)
    rmsnorm(x, w, x, eps=1e-6)  # out aliases x
    assert _bf16_ulps(x, ref) <= 1
    assert rmsnorm_threads(2048) == 256 and rmsnorm_threads(5120) == 256 and rmsnorm_threads(16384) == 512
    with pytest.raises(KernelError):
        rmsnorm(x, w[:64], torch.empty_like(x), eps=1e-6)
    with pytest.raises(KernelError):
        rmsnorm(x.float(), w, torch.empty_like(x), eps=1e-6)
    with pytest.raises(KernelError):
        rmsnorm(x, w, torch.empty_like(x), eps=1e-6, mode="gemma")


def _rand(g, *shape, std=1.0):
    return (torch.randn(*shape, generator=g) * std).bfloat16()


@pytest.mark.parametrize("rows,n,mode,offset,alias,with_scale", [
    (1, 2816, "fp32", 0.0, "out", True),    # Gemma feed-forward end: resid = (resid + norm) * layer_scalar
    (1, 2816, "fp32", 0.0, "out", False),   # Gemma attention end: resid = resid + norm
    (1, 2816, "fp32", 0.0, None, False),    # Gemma MoE: dense = tmp + norm(moe_out)
    (3, 264, "fp32", 1.0, None, True),      # ragged chunks, rows > 1
    (2, 5120, "llama", 0.0, "x", True),     # several chunks per thread, out = x
    (4, 64, "fp32", 0.0, "out", True),      # short rows
])
def test_rmsnorm_post_add_matches_torch_ops(rows, n, mode, offset, alias, with_scale):
    """``add`` / ``scale`` give exactly the plain launch followed by torch's bf16 add and multiply."""
    g = torch.Generator().manual_seed(rows * 7 + n)
    x = _rand(g, rows, n, std=3)
    w = (torch.randn(n, generator=g) * 0.5 + 0.2).bfloat16()
    add = _rand(g, rows, n, std=2)
    scale = (torch.rand(1, generator=g) * 1.5 + 0.1).bfloat16() if with_scale else None
    # the ops replaced: the plain launch, then the torch add and multiply
    normed = torch.full_like(x, float("nan"))
    rmsnorm(x, w, normed, eps=1e-6, mode=mode, offset=offset)
    want = add + normed
    if scale is not None:
        want = want * scale
    x_k, add_k = x.clone(), add.clone()
    out = {"out": add_k, "x": x_k, None: torch.full_like(x, float("nan"))}[alias]
    rmsnorm(x_k, w, out, eps=1e-6, mode=mode, offset=offset, add=add_k, scale=scale)
    assert torch.equal(out, want)
    if alias != "x":
        assert torch.equal(x_k, x)
    # the module's reference follows the same epilogue on its own norm
    out_ref = add.clone() if alias == "out" else torch.full_like(x, float("nan"))
    rmsnorm_ref(x, w, out_ref, eps=1e-6, mode=mode, offset=offset, add=add if alias != "out" else out_ref,
                scale=scale)
    assert rel_err(out, out_ref) < 1e-2


@pytest.mark.parametrize("rows,n,out_is_x", [(1, 2816, False), (2, 136, True), (3, 5120, False)])
def test_rmsnorm_second_weight_matches_two_launches(rows, n, out_is_x):
    """``weight2`` / ``out2``: both norms of one input in one launch, each as its own launch."""
    g = torch.Generator().manual_seed(rows * 11 + n)
    x = _rand(g, rows, n, std=3)
    w, w2 = (torch.randn(n, generator=g) * 0.5 + 0.2).bfloat16(), (torch.randn(n, generator=g) * 0.5).bfloat16()
    want, want2 = torch.empty_like(x), torch.empty_like(x)
    rmsnorm(x, w, want, eps=1e-6)
    rmsnorm(x, w2, want2, eps=1e-6)
    x_k = x.clone()
    out = x_k if out_is_x else torch.full_like(x, float("nan"))
    out2 = torch.full_like(x, float("nan"))
    rmsnorm(x_k, w, out, eps=1e-6, weight2=w2, out2=out2)
    assert torch.equal(out, want) and torch.equal(out2, want2)
    ref, ref2 = torch.full_like(x, float("nan")), torch.full_like(x, float("nan"))
    rmsnorm_ref(x, w, ref, eps=1e-6, weight2=w2, out2=ref2)
    assert _bf16_ulps(out, ref) <= 1 and _bf16_ulps(out2, ref2) <= 1


def test_rmsnorm_epilogue_bad_args():
    g = torch.Generator().manual_seed(6)
    x, w = _rand(g, 2, 96), _rand(g, 96)
    out, add, s = torch.empty_like(x), _rand(g, 2, 96), torch.ones(1, dtype=torch.bfloat16)
    with pytest.raises(KernelError, match="scale needs add"):
        rmsnorm(x, w, out, eps=1e-6, scale=s)
    with pytest.raises(KernelError, match="scale"):
        rmsnorm(x, w, out, eps=1e-6, add=add, scale=s.float())  # bf16 only
    with pytest.raises(KernelError, match="add"):
        rmsnorm(x, w, out, eps=1e-6, add=add[:, :64])
    with pytest.raises(KernelError, match="do not combine"):
        rmsnorm(x, w, out, eps=1e-6, add=add, residual=add.clone())
    with pytest.raises(KernelError, match="come together"):
        rmsnorm(x, w, out, eps=1e-6, weight2=w)
    with pytest.raises(KernelError, match="needs weight"):
        rmsnorm(x, None, out, eps=1e-6, weight2=w, out2=torch.empty_like(x))
