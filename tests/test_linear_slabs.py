"""A quantized weight too big to dequantise whole is multiplied a slab of rows at a time, with the
same numbers (nvfp4, fp8 blocks, GGUF), and QTensor.rows refuses to cut a scale block."""

from __future__ import annotations

import torch

import imp_core.layers.linear as linear
from imp_core.layers.linear import Linear
from imp_core.quant import QTensor, quantize_gguf, quantize_nvfp4


def _weights(g):
    w = torch.randn(640, 256, generator=g) * 0.05
    codes, scales, gs = quantize_nvfp4(w)
    fp8 = QTensor("fp8", (w * 40).to(torch.float8_e4m3fn), (640, 256),
                  {"scale": torch.rand(5, 2, generator=g) * 0.03 + 0.01}, {"block_size": (128, 128)})
    return [QTensor("nvfp4", codes, (640, 256), {"block": scales, "global": gs.float().reshape(())}),
            fp8, QTensor("gguf:Q4_K", torch.from_numpy(quantize_gguf(w, "Q4_K")).reshape(640, -1), (640, 256))]


def test_slabbed_product_matches_the_whole_dequantised_weight(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 256, generator=g)
    for qt in _weights(g):
        whole = Linear(qt)(x)
        monkeypatch.setattr(linear, "SLAB_BYTES", 128 * 256 * 2)  # slabs of 128 rows: 5 of them
        sliced = Linear(qt)(x)
        monkeypatch.undo()
        assert sliced.shape == (3, 640)
        assert torch.allclose(sliced, whole, rtol=1e-6, atol=1e-7), qt.qtype
        assert torch.equal(qt.rows(128, 384).dequantize(), qt.dequantize()[128:384])


def test_rows_refuses_to_cut_an_fp8_block():
    fp8 = _weights(torch.Generator().manual_seed(1))[1]
    assert fp8.rows(64, 192) is None
    assert fp8.rows(512, 640) is not None
