"""NVFP4 (HF layout) against the producers' own code: compressed-tensors 0.20.0 and nvidia-modelopt 0.47.0.

Tolerances: codes, block scales and stored global scales from ``quantize_nvfp4`` are bit-identical
to each producer's. Dequantized float32 values agree within rtol 2.5e-7 (2 float32 ulps; the
producers fold the global scale into the block scale before multiplying by the code, we multiply
code*block exactly then apply the global once; observed max 1.2e-7). compressed-tensors' own bf16
decompression is matched to 1 bf16 ulp (observed identical).
"""

import warnings

import gguf
import numpy as np
import pytest
import torch
from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
from compressed_tensors.quantization import preset_name_to_scheme
from compressed_tensors.quantization.lifecycle.forward import dequantize as ct_dequantize
from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam

from imp_core.errors import QuantError
from imp_core.quant.gguf_fp4 import hf_nvfp4_to_gguf_blocks
from imp_core.quant.nvfp4 import (
    dequant_nvfp4,
    global_scale_from_compressed_tensors,
    global_scale_from_modelopt,
    quantize_nvfp4,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # modelopt warns that transformers 5.24 is untested
    from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor

RTOL = 2.5e-7


def _weights(seed, n=32, k=256):
    gen = torch.Generator().manual_seed(seed)
    # rows spanning 4 decades, so block scales use much of the E4M3 range
    return torch.randn(n, k, generator=gen) * 10 ** (torch.rand(n, 1, generator=gen) * 4 - 3)


def _ct_compress(w):
    scheme = preset_name_to_scheme("NVFP4", ["Linear"])
    gscale = generate_gparam(w.min(), w.max())
    groups = w.unflatten(-1, (w.shape[-1] // 16, 16))
    scale, _ = calculate_qparams(groups.amin(-1), groups.amax(-1), scheme.weights, global_scale=gscale)
    state = {"weight": w, "weight_scale": scale, "weight_global_scale": gscale}
    return scheme, NVFP4PackedCompressor.compress(state, scheme)


def _assert_close(ours, ref, rtol=RTOL):
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    err = (ours - ref).abs()
    assert bool((err <= rtol * ref.abs()).all()), f"max rel err {(err / ref.abs().clamp(min=1e-30)).max():.3g}"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compressed_tensors_packed_weight_dequantizes_like_the_producer(seed):
    w = _weights(seed)
    scheme, packed = _ct_compress(w)
    unpacked = unpack_fp4_from_uint8(packed["weight_packed"], *w.shape, dtype=torch.float32)
    ref = ct_dequantize(
        x_q=unpacked,
        scale=packed["weight_scale"].float(),
        args=scheme.weights,
        global_scale=packed["weight_global_scale"],
        dtype=torch.float32,
    )
    g = global_scale_from_compressed_tensors(packed["weight_global_scale"])
    ours = dequant_nvfp4(packed["weight_packed"], packed["weight_scale"], g)
    _assert_close(ours, ref)
    # the producer's own bf16 decompression path
    ref_bf16 = NVFP4PackedCompressor.decompress(dict(packed), scheme)["weight"]
    ours_bf16 = dequant_nvfp4(packed["weight_packed"], packed["weight_scale"], g, dtype=torch.bfloat16)
    _assert_close(ours_bf16.float(), ref_bf16.float(), rtol=2.0**-8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantize_matches_compressed_tensors_bit_for_bit(seed):
    w = _weights(seed)
    _, packed = _ct_compress(w)
    codes, block, stored = quantize_nvfp4(w, convention="compressed-tensors")
    assert torch.equal(codes, packed["weight_packed"])
    assert torch.equal(block.view(torch.uint8), packed["weight_scale"].view(torch.uint8))
    assert torch.equal(stored, packed["weight_global_scale"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_modelopt_tensor_dequantizes_like_the_producer_and_quantize_matches(seed):
    w = _weights(seed)
    qt, block, scale_2 = NVFP4QTensor.quantize(w.clone(), 16)
    ref = qt.dequantize(dtype=torch.float32, scale=block, double_scale=scale_2, block_sizes={-1: 16})
    ours = dequant_nvfp4(qt._quantized_data, block, global_scale_from_modelopt(scale_2))
    _assert_close(ours, ref)
    codes, our_block, stored = quantize_nvfp4(w, convention="modelopt")
    assert torch.equal(codes, qt._quantized_data)
    assert torch.equal(our_block.view(torch.uint8), block.view(torch.uint8))
    assert torch.equal(stored, scale_2) and stored.shape == ()


def test_two_conventions_dequantize_to_the_same_kind_of_error():
    w = _weights(3, n=64, k=512)
    for convention, to_mult in (
        ("modelopt", global_scale_from_modelopt),
        ("compressed-tensors", global_scale_from_compressed_tensors),
    ):
        codes, block, stored = quantize_nvfp4(w, convention=convention)
        back = dequant_nvfp4(codes, block, to_mult(stored))
        rel = ((back - w).norm(dim=1) / w.norm(dim=1)).max().item()
        # docs/formats.md, "Expected quantization error": ~9.5 % relative Frobenius error on Gaussian weights
        assert 0.06 < rel < 0.12, (convention, rel)


def test_expert_stack_with_one_global_scale_per_expert():
    w = torch.stack([_weights(s, n=16, k=64) for s in range(3)])
    parts = [quantize_nvfp4(w[e], convention="modelopt") for e in range(3)]
    codes = torch.stack([p[0] for p in parts])
    block = torch.stack([p[1] for p in parts])
    g = torch.stack([p[2] for p in parts])  # [E]
    ours = dequant_nvfp4(codes, block, global_scale_from_modelopt(g))
    for e, (c, b, s) in enumerate(parts):
        assert torch.equal(ours[e], dequant_nvfp4(c, b, s))


def test_gguf_nvfp4_repack_times_scale_equals_hf_dequant():
    w = _weights(4, n=8, k=128)
    codes, block, scale_2 = quantize_nvfp4(w, convention="modelopt")
    blocks = hf_nvfp4_to_gguf_blocks(codes, block).numpy()
    ref = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.NVFP4) * scale_2.item()
    ours = dequant_nvfp4(codes, block, scale_2).numpy()
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=0)


def test_bad_inputs_raise_one_line_quant_errors():
    codes, block, g = quantize_nvfp4(_weights(5, n=4, k=32))
    cases = [
        (lambda: dequant_nvfp4(codes, block.float(), g, name="layers.0.w"), "block scale has dtype float32"),
        (lambda: dequant_nvfp4(codes.to(torch.int32), block, g), "codes has dtype int32"),
        (lambda: dequant_nvfp4(codes[:, :9], block[:, :1], g), "K=18 columns, not a multiple"),
        (lambda: dequant_nvfp4(codes, block[:, :1], g), "block scale has shape [4, 1], expected [4, 2]"),
        (lambda: dequant_nvfp4(codes, block, torch.ones(3)), "global scale has 3 values"),
        (lambda: dequant_nvfp4(codes, block, torch.ones((), dtype=torch.int32)), "global scale has dtype int32"),
        (lambda: global_scale_from_compressed_tensors(torch.zeros(1)), "contains 0"),
        (lambda: quantize_nvfp4(torch.randn(4, 20)), "multiple of 16"),
        (lambda: quantize_nvfp4(torch.randn(4, 16), convention="vllm"), "unknown convention"),
    ]
    for call, fragment in cases:
        with pytest.raises(QuantError) as info:
            call()
        msg = str(info.value)
        assert fragment in msg and "\n" not in msg, msg
    with pytest.raises(QuantError, match="'layers.0.w'"):
        dequant_nvfp4(codes, block.float(), g, name="layers.0.w")
