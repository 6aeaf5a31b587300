"""Split-K of the tensor-core GEMVs (FP8 in every scale mode, GGUF q4 / q8) under the CUDA
simulator: the same sums as one split, the tickets back at zero, the workspace fully rewritten."""

from kernels_sim import rel_err, sim_skip  # noqa: I001  (must precede imp_kernels)

import pytest
import torch

from imp_core.quant import quantize_gguf
from imp_kernels.gemv_fp8 import gemv_fp8
from imp_kernels.gemv_gguf_tc import gemv_gguf_tc
from imp_kernels.mma_frag import split_plan, splitk_workspace
from imp_kernels.repack import fp8_tile
from imp_kernels.repack_gguf import tc_tile

pytestmark = sim_skip
N, K, M = 40, 512, 2


def _run_both(call, k=K):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(M, k, generator=g).bfloat16()
    res = torch.randn(M, N, generator=g).bfloat16()
    one = torch.full((M, N), float("nan"))
    call(x, one, res, None, None)
    ws = splitk_workspace(N, "cpu")
    ws[0].fill_(float("nan"))
    out = torch.full((M, N), float("nan"))
    call(x, out, res, ws, 3)
    assert torch.equal(ws[1], torch.zeros_like(ws[1]))
    assert rel_err(out, one) < 1e-6


@pytest.mark.parametrize("mode", ["channel", "block32"])  # a per-row epilogue; the new scale mode
def test_fp8_split_k_matches_one_split(mode):
    g = torch.Generator().manual_seed(1)
    codes = fp8_tile(torch.randn(N, K, generator=g).to(torch.float8_e4m3fn).view(torch.uint8))
    scale = {"tensor": torch.rand(1, generator=g), "channel": torch.rand(N, generator=g),
             "block128": torch.rand(1, 4, generator=g), "block32": torch.rand(2, 4, generator=g)}[mode] + 0.01
    _run_both(lambda x, out, res, ws, sp: gemv_fp8(x, codes, scale, out, residual=res, warps=2, workspace=ws,
                                                  splits=sp))


@pytest.mark.parametrize("qtype", ["Q4_K"])  # the q8 kernel's loop is the FP8 one's (tested above)
def test_gguf_tc_split_k_matches_one_split(qtype):
    k = 256  # Q4_K: 4 chunks in 3 splits of 2, 2 and none (an empty split adds zeros)
    g = torch.Generator().manual_seed(3)
    raw = torch.from_numpy(quantize_gguf(torch.randn(N, k, generator=g) * 0.05, qtype)).reshape(-1)
    kind, codes, scales, unscale = tc_tile(raw, qtype, N, k)
    _run_both(lambda x, out, res, ws, sp: gemv_gguf_tc(x, kind, codes, scales, out, unscale=unscale, residual=res,
                                                      warps=1, workspace=ws, splits=sp), k)


def test_split_plan_splits_only_narrow_weights():
    assert split_plan(2048, 80) == 1  # Mistral gate_up: 2048 blocks already
    assert split_plan(160, 512) == 3  # Mistral down (N = 5120): 160 blocks -> 480
    assert split_plan(64, 64) == 1    # Qwen3.6 out_proj (K = 4096): the split's fixed cost outweighs it
    assert split_plan(64, 512) == 7
