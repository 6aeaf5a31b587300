"""QTensor dispatch, bookkeeping and errors (the numerics are tested per format in the other files)."""

import numpy as np
import pytest
import torch

from imp_core.errors import QuantError
from imp_core.quant import (
    QTensor,
    dequant_fp8,
    dequant_gguf,
    dequant_nvfp4,
    dequantize,
    quantize_fp8,
    quantize_gguf,
    quantize_nvfp4,
)
from imp_core.quant.gguf_fp4 import hf_nvfp4_to_gguf_blocks
from imp_core.quant.mxfp4 import dequant_mxfp4


def _w(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_nvfp4_qtensor_dequantizes_like_the_function_and_counts_bytes():
    codes, block, g = quantize_nvfp4(_w(16, 64))
    qt = QTensor("nvfp4", codes, (16, 64), scales={"block": block, "global": g}, meta={"producer": "modelopt"})
    out = qt.dequantize(torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, dequant_nvfp4(codes, block, g, dtype=torch.bfloat16))
    assert qt.nbytes == 16 * 32 + 16 * 4 + 4
    assert torch.equal(dequantize(qt, torch.float32), qt.dequantize())


def test_fp8_qtensor_with_block_meta():
    q, s = quantize_fp8(_w(40, 70), "block")
    qt = QTensor("fp8", q, (40, 70), scales={"scale": s}, meta={"block_size": [32, 32]})
    with pytest.raises(QuantError, match="block scale has shape"):
        qt.dequantize()  # the scale grid was built for 128x128 tiles
    qt.meta["block_size"] = [128, 128]
    assert torch.equal(qt.dequantize(), dequant_fp8(q, s))


def test_mxfp4_qtensor():
    gen = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 256, (4, 32), generator=gen, dtype=torch.uint8)
    e = torch.randint(120, 130, (4, 2), generator=gen, dtype=torch.uint8)
    qt = QTensor("mxfp4", codes, (4, 64), scales={"block": e})
    assert torch.equal(qt.dequantize(), dequant_mxfp4(codes, e))


def test_gguf_qtensor_and_per_expert_global_scale():
    w = _w(3, 4, 128, seed=2)
    raw = torch.from_numpy(quantize_gguf(w, "NVFP4"))
    scale = torch.tensor([0.5, 2.0, 4.0])
    qt = QTensor("gguf:NVFP4", raw, (3, 4, 128), scales={"global": scale}, meta={"name": "blk.0.ffn_up_exps.weight"})
    base = dequant_gguf(raw, "NVFP4", (3, 4, 128))
    assert torch.equal(qt.dequantize(), base * scale.reshape(3, 1, 1))
    plain = QTensor("gguf:Q8_0", torch.from_numpy(quantize_gguf(w[0], "Q8_0")), (4, 128))
    assert torch.equal(plain.dequantize(), dequant_gguf(plain.data, "Q8_0", (4, 128)))
    # GGUF NVFP4 blocks from an HF tensor, times its global scale, equal the HF dequant
    codes, block, g = quantize_nvfp4(w[0])
    hf = QTensor("nvfp4", codes, (4, 128), scales={"block": block, "global": g})
    gg = QTensor("gguf:NVFP4", hf_nvfp4_to_gguf_blocks(codes, block), (4, 128), scales={"global": g})
    np.testing.assert_allclose(gg.dequantize().numpy(), hf.dequantize().numpy(), rtol=2.5e-7, atol=0)


def test_to_moves_data_and_scales_and_plain_tensors_pass_through():
    codes, block, g = quantize_nvfp4(_w(8, 32))
    qt = QTensor("nvfp4", codes, [8, 32], scales={"block": block, "global": g})
    moved = qt.to("cpu")
    assert moved is not qt and moved.shape == (8, 32)
    assert torch.equal(moved.dequantize(), qt.dequantize())
    t = _w(3, 3)
    assert dequantize(t, torch.float16).dtype == torch.float16


def test_errors():
    codes, block, g = quantize_nvfp4(_w(8, 32))
    with pytest.raises(QuantError, match=r"has no scales\['global'\]"):
        QTensor("nvfp4", codes, (8, 32), scales={"block": block}).dequantize()
    with pytest.raises(QuantError, match="decodes to shape \\[8, 32\\], but its logical shape is \\[8, 48\\]"):
        QTensor("nvfp4", codes, (8, 48), scales={"block": block, "global": g}, meta={"name": "w"}).dequantize()
    with pytest.raises(QuantError, match="unknown QTensor qtype 'int4'"):
        QTensor("int4", codes, (8, 32)).dequantize()
    with pytest.raises(QuantError, match="GGUF tensor type IQ1_S is not supported"):
        QTensor("gguf:IQ1_S", codes, (8, 32)).dequantize()
    with pytest.raises(QuantError, match="expects a torch.Tensor or QTensor"):
        dequantize(np.zeros(3), torch.float32)
