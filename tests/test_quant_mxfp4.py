"""HF-layout MXFP4 against nvidia-modelopt 0.47.0's MXFP4QTensor and against gguf-py's MXFP4 blocks.

Power-of-two scales times E2M1 values are exact in float32: tolerance 0.
"""

import warnings

import gguf
import numpy as np
import pytest
import torch

from imp_core.errors import QuantError
from imp_core.quant.fp4 import unpack_fp4_codes
from imp_core.quant.mxfp4 import dequant_mxfp4

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # modelopt warns that transformers 5.24 is untested
    from modelopt.torch.quantization.qtensor.mxfp4_tensor import MXFP4QTensor


def _modelopt_mxfp4(seed, n=24, k=256):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * 10 ** (torch.rand(n, 1, generator=gen) * 4 - 2)
    qt, e8m0 = MXFP4QTensor.quantize(w, 32)
    return w, qt, e8m0.reshape(n, k // 32)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_modelopt_dequantize(seed):
    w, qt, scales = _modelopt_mxfp4(seed)
    ref = qt.dequantize(dtype=torch.float32, scale=scales.reshape(-1, 1), block_sizes={-1: 32})
    ours = dequant_mxfp4(qt._quantized_data, scales)
    assert torch.equal(ours, ref)
    assert ((ours - w).norm() / w.norm()).item() < 0.2  # sanity: it is the quantized weight


def test_matches_gguf_mxfp4_after_repacking_to_ggml_order():
    _, qt, scales = _modelopt_mxfp4(2, n=8, k=128)
    codes = unpack_fp4_codes(qt._quantized_data).to(torch.uint8).reshape(8, 4, 32)
    qs = codes[..., :16] | (codes[..., 16:] << 4)  # ggml: low nibbles = first half of the block
    blocks = torch.cat([scales.reshape(8, 4, 1), qs], dim=-1).reshape(8, 4 * 17).numpy()
    ref = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.MXFP4)
    np.testing.assert_array_equal(dequant_mxfp4(qt._quantized_data, scales).numpy(), ref)


def test_bad_inputs_raise_one_line_quant_errors():
    _, qt, scales = _modelopt_mxfp4(3, n=4, k=64)
    codes = qt._quantized_data
    cases = [
        (lambda: dequant_mxfp4(codes, scales.float()), "has dtype float32, expected uint8"),
        (lambda: dequant_mxfp4(codes[:, :8], scales[:, :1]), "K=16 columns, not a multiple"),
        (lambda: dequant_mxfp4(codes, scales[:, :1]), "expected [4, 2]"),
    ]
    for call, fragment in cases:
        with pytest.raises(QuantError) as info:
            call()
        assert fragment in str(info.value) and "\n" not in str(info.value)
