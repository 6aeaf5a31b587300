"""FP8 (float8_e4m3fn) dequantization against the producers: compressed-tensors 0.20.0 (tensor,
channel, 128x128 block), transformers 5.24.0's block-FP8 ``weight_scale_inv`` dequant and
nvidia-modelopt 0.47.0's FP8QTensor. One multiply per element in float32 on both sides, so every
comparison is bit-exact (tolerance 0). Shapes are deliberately not multiples of 128.
"""

import math
import warnings

import pytest
import torch
from compressed_tensors.compressors.naive_quantized.base import FloatQuantizationCompressor
from compressed_tensors.quantization import preset_name_to_scheme
from compressed_tensors.quantization.utils import calculate_qparams
from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight

from imp_core.errors import QuantError
from imp_core.quant.fp8 import block_scale_shape, dequant_fp8, quantize_fp8

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # modelopt warns that transformers 5.24 is untested
    from modelopt.torch.quantization.qtensor.fp8_tensor import FP8QTensor

N, K = 200, 300
PRESETS = {"tensor": "FP8", "channel": "FP8_DYNAMIC", "block": "FP8_BLOCK"}


def _weights(seed, n=N, k=K):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=gen) * 10 ** (torch.rand(n, 1, generator=gen) * 2 - 2)


def _ct_minmax(w, granularity):
    if granularity == "tensor":
        return w.min(), w.max()
    if granularity == "channel":
        return w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    rows, cols = block_scale_shape(*w.shape)
    padded = torch.zeros(rows * 128, cols * 128)
    padded[: w.shape[0], : w.shape[1]] = w
    tiles = padded.reshape(rows, 128, cols, 128)
    return tiles.amin((1, 3)), tiles.amax((1, 3))


@pytest.mark.parametrize("granularity", ["tensor", "channel", "block"])
def test_compressed_tensors_fp8_dequantizes_like_the_producer(granularity):
    w = _weights(0)
    scheme = preset_name_to_scheme(PRESETS[granularity], ["Linear"])
    scale, _ = calculate_qparams(*_ct_minmax(w, granularity), scheme.weights)
    packed = FloatQuantizationCompressor.compress({"weight": w, "weight_scale": scale}, scheme)
    ref = FloatQuantizationCompressor.decompress(dict(packed), scheme)["weight"]
    ours = dequant_fp8(packed["weight"], packed["weight_scale"])
    assert torch.equal(ours, ref)
    # our fixture quantizer reproduces the producer's bytes and scales
    q, our_scale = quantize_fp8(w, granularity)
    assert torch.equal(q.view(torch.uint8), packed["weight"].view(torch.uint8))
    assert torch.equal(our_scale.reshape(scale.shape), scale)


@pytest.mark.parametrize("shape", [(200, 300), (256, 128), (130, 129), (3, 70, 200)])
def test_block_weight_scale_inv_matches_transformers(shape):
    w = _weights(1, n=math.prod(shape[:-1]), k=shape[-1]).reshape(shape)
    q, scale_inv = zip(*[quantize_fp8(m, "block") for m in w.reshape(-1, *shape[-2:])])
    q = torch.stack(q).reshape(shape)
    scale_inv = torch.stack(scale_inv).reshape(*shape[:-2], *block_scale_shape(*shape[-2:]))
    ref = _dequantize_fp8_weight(q, scale_inv, [128, 128], torch.float32)
    assert torch.equal(dequant_fp8(q, scale_inv), ref)
    bf16_inv = scale_inv.to(torch.bfloat16)
    assert torch.equal(dequant_fp8(q, bf16_inv), _dequantize_fp8_weight(q, bf16_inv, [128, 128], torch.float32))


@pytest.mark.parametrize("kind", ["tensor", "block"])
def test_modelopt_fp8qtensor_dequantizes_like_ours(kind):
    w = _weights(2)
    block_sizes = {-2: 128, -1: 128} if kind == "block" else None
    qt, scale = FP8QTensor.quantize(w, block_sizes=block_sizes)
    kwargs = {"block_sizes": block_sizes} if block_sizes else {}
    ref = qt.dequantize(dtype=torch.float32, scale=scale, **kwargs)
    assert torch.equal(dequant_fp8(qt._quantized_data, scale), ref)


def test_e8m0_uint8_block_scales_are_powers_of_two():
    w = _weights(3)
    q, _ = quantize_fp8(w, "block")
    gen = torch.Generator().manual_seed(3)
    e = torch.randint(110, 135, block_scale_shape(N, K), generator=gen, dtype=torch.uint8)
    mult = torch.ldexp(torch.ones(e.shape), e.int() - 127)
    expected = q.float() * mult.repeat_interleave(128, 0)[:N].repeat_interleave(128, 1)[:, :K]
    assert torch.equal(dequant_fp8(q, e), expected)


def test_per_expert_tensor_scales_and_bf16_output():
    w = torch.stack([_weights(s, n=16, k=48) for s in range(3)])
    parts = [quantize_fp8(w[e], "tensor") for e in range(3)]
    q = torch.stack([p[0] for p in parts])
    s = torch.stack([p[1] for p in parts])  # [E]
    out = dequant_fp8(q, s, dtype=torch.bfloat16)
    for e in range(3):
        assert torch.equal(out[e], (parts[e][0].float() * parts[e][1]).to(torch.bfloat16))


@pytest.mark.parametrize("granularity", ["tensor", "channel", "block"])
def test_round_trip_error(granularity):
    w = _weights(4)
    q, s = quantize_fp8(w, granularity)
    rel = ((dequant_fp8(q, s) - w).norm() / w.norm()).item()
    # E4M3 has 3 mantissa bits: uniform relative rounding error ~ 2^-4/sqrt(3) ~ 2.2-2.6 %
    assert 0.01 < rel < 0.035, rel


def test_bad_inputs_raise_one_line_quant_errors():
    q, s = quantize_fp8(_weights(5, n=8, k=16), "channel")
    cases = [
        (lambda: dequant_fp8(q.float(), s), "has dtype float32, expected float8_e4m3fn"),
        (lambda: dequant_fp8(q, s.to(torch.int32), name="model.layers.1.q_proj.weight"), "scale has dtype int32"),
        (lambda: dequant_fp8(q, torch.ones(8, 2)), "fits neither per-tensor"),
        (lambda: dequant_fp8(q, torch.ones(5), granularity="channel"), "per-channel scale has shape [5]"),
        (lambda: dequant_fp8(q, torch.ones(8, dtype=torch.uint8)), "only valid for block scales"),
        (lambda: dequant_fp8(q, s, granularity="row"), "unknown FP8 granularity"),
        (lambda: quantize_fp8(torch.randn(3, 4, 5), "tensor"), "2-D"),
    ]
    for call, fragment in cases:
        with pytest.raises(QuantError) as info:
            call()
        msg = str(info.value)
        assert fragment in msg and "\n" not in msg, msg
