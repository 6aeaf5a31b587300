"""FP8 block-scaled weights joined (fuse_rows) or regrouped (select_rows) 32 rows at a time: the
128x128 block scales become 32x128 ones, exactly, and gemv_fp8 reads them (CUDA simulator)."""

from kernels_sim import rel_err, sim_skip  # noqa: I001  (must precede imp_kernels)

import torch

from imp_core.fast.linear import bind_linear, fuse_rows, select_rows
from imp_core.quant import QTensor

pytestmark = sim_skip


def _fp8(g, n, k):
    data = (torch.randn(n, k, generator=g)).to(torch.float8_e4m3fn)
    scale = torch.rand(-(-n // 128), -(-k // 128), generator=g) * 0.02 + 0.001
    return QTensor("fp8", data, (n, k), {"scale": scale}, {"granularity": "block", "block_size": (128, 128)})


def test_block_scaled_rows_join_at_32_row_granularity_and_run_in_one_launch():
    g = torch.Generator().manual_seed(3)
    parts = [_fp8(g, n, 256) for n in (128, 64, 32, 32)]  # like Qwen3.6's in_proj qkv | z | b | a
    fused = fuse_rows(parts)
    assert fused is not None and fused.meta["block_size"] == (32, 128) and fused.scales["scale"].shape == (8, 2)
    want = torch.cat([p.dequantize(torch.float32) for p in parts])
    assert torch.equal(fused.dequantize(torch.float32), want)
    lin = bind_linear(fused)
    assert lin.kind == "fp8"
    x = torch.randn(1, 256, generator=g).bfloat16()
    out = torch.full((1, 256), float("nan"), dtype=torch.bfloat16)
    lin(x, out)
    assert rel_err(out, x.double() @ want.double().t()) < 4e-3


def test_regrouped_rows_keep_their_scales():
    g = torch.Generator().manual_seed(4)
    w = _fp8(g, 256, 128)
    ranges = [(32 * i, 32 * i + 32) for i in range(0, 8, 2)] + [(32 * i, 32 * i + 32) for i in range(1, 8, 2)]
    sel = select_rows(w, ranges)
    assert sel is not None and sel.meta["block_size"] == (32, 128)
    dense = w.dequantize(torch.float32)
    assert torch.equal(sel.dequantize(torch.float32), torch.cat([dense[a:b] for a, b in ranges]))
    assert select_rows(w, [(16, 48)]) is None  # a 32-row block would be cut
    whole = select_rows(w, [(128, 256), (0, 128)])
    assert whole.meta["block_size"] == (128, 128)  # 128-aligned moves keep the original blocks
