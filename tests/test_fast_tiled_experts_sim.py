"""Phase 3-MoE keeps one copy of NVFP4 experts: the tiled buffers the decode kernel reads. The
tiled-layout dequantisation kernel against the reference dequantisation (bit for bit, bf16 and
fp32, padded tiles, one or two global multipliers per expert), and the reference Experts after the
packed stacks are released: same outputs, the packed tensors freed. CUDA simulator."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from kernels_sim import sim_skip
from imp_core.quant import QTensor

pytestmark = sim_skip


def _stack(e, n, k, groups, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 256, (e, n, k // 2), generator=g, dtype=torch.uint8)
    block = (torch.rand(e, n, k // 16, generator=g) * 3 + 0.01).to(torch.float8_e4m3fn)
    glob = torch.rand(e, groups, generator=g) + 0.5 if groups == 2 else torch.rand(e, generator=g) + 0.5
    return QTensor("nvfp4", codes, (e, n, k), {"block": block, "global": glob}, {"name": "mlp.experts.x"})


@pytest.mark.parametrize("e,n,k,groups", [(2, 40, 96, 1), (3, 64, 128, 2), (1, 34, 80, 2)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_tiled_dequant_is_the_reference_dequant(e, n, k, groups, dtype):
    from imp_kernels.dequant_nvfp4 import nvfp4_tiled_dequant
    from imp_kernels.repack import nvfp4_experts_tile

    qt = _stack(e, n, k, groups, seed=e * n + k)
    codes_t, scales_t = nvfp4_experts_tile(qt.data, qt.scales["block"].view(torch.uint8))
    got = nvfp4_tiled_dequant(codes_t, scales_t, qt.scales["global"], n, k, dtype)
    assert torch.equal(got, qt.dequantize(dtype=dtype))


def test_experts_read_the_tiled_buffers_after_release():
    from imp_core.fast.experts import TiledNVFP4Stack, bind_experts, release_packed_stacks
    from imp_core.layers.moe import Experts

    e, i, h = 4, 32, 64
    ex = Experts(_stack(e, 2 * i, h, 2, seed=1), _stack(e, h, i, 1, seed=2))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, h, generator=g).to(torch.bfloat16)
    ids = torch.stack([torch.randperm(e, generator=g)[:2] for _ in range(6)])
    w = torch.rand(6, 2, generator=g)
    before_loop, before_gather = ex.loop(x, ids, w), ex.gather(x[:2], ids[:2], w[:2])
    packed = weakref.ref(ex.gate_up.data)
    fast = bind_experts(ex.gate_up, ex.down, act="silu", top_k=2)
    release_packed_stacks(ex, fast)
    gc.collect()
    assert isinstance(ex.gate_up, TiledNVFP4Stack) and isinstance(ex.down, TiledNVFP4Stack)
    assert packed() is None  # the checkpoint-layout codes are gone
    assert "released" in fast.reason
    assert torch.equal(ex.loop(x, ids, w), before_loop)
    assert torch.equal(ex.gather(x[:2], ids[:2], w[:2]), before_gather)
    # binding the same layer again adopts the tiled buffers instead of failing
    again = bind_experts(ex.gate_up, ex.down, act="silu", top_k=2)
    assert again.kind == "nvfp4" and again.tensors["gate_up"][0] is ex.gate_up.codes
