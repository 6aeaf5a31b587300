"""GGUF block dequantization against gguf-py 0.19.0's numpy ``gguf.quants.dequantize``.

Tolerance: bit-exact (our float32 operations follow gguf-py's order; NaN compares equal to NaN).
Inputs: random block bytes with the fp16 scale fields set to random finite values, and blocks
produced by quantizing random weights (gguf-py's quantizers, or ours for the K-quants / NVFP4).
"""

import math

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as GT

from imp_core.errors import QuantError
from imp_core.quant.gguf_blocks import GGUF_BLOCK, dequant_gguf, gguf_nbytes
from imp_core.quant.gguf_quantize import quantize_gguf

# byte offsets of the fp16 fields (d, dmin, m) inside each block, docs/formats.md "GGUF block types"
F16_FIELDS = {
    "Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
}
ALL_TYPES = list(GGUF_BLOCK)
K_QUANTS = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def _random_blocks(qtype, shape, seed):
    rng = np.random.default_rng(seed)
    elems, nbytes = GGUF_BLOCK[qtype]
    n_blocks = math.prod(shape) // elems
    raw = rng.integers(0, 256, size=(n_blocks, nbytes), dtype=np.uint8)
    for off in F16_FIELDS.get(qtype, []):
        field = rng.uniform(-1.0, 1.0, size=n_blocks) * 10.0 ** rng.uniform(-4, 1, size=n_blocks)
        raw[:, off : off + 2] = field.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(*shape[:-1], shape[-1] // elems * nbytes)


def _ours(raw, qtype, shape, **kw):
    return dequant_gguf(torch.from_numpy(np.ascontiguousarray(raw)), qtype, shape, **kw)


def _shape_for(qtype, rows=6):
    elems = GGUF_BLOCK[qtype][0]
    return (rows, 2 * elems if elems > 1 else 40)


def test_block_table_matches_gguf_py():
    for name, size in GGUF_BLOCK.items():
        assert gguf.GGML_QUANT_SIZES[GT[name]] == size


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_random_blocks_match_gguf_py_bit_exactly(qtype):
    shape = _shape_for(qtype)
    raw = _random_blocks(qtype, shape, seed=len(qtype))
    ref = gguf.quants.dequantize(raw, GT[qtype])
    ours = _ours(raw, qtype, shape).numpy()
    assert ours.shape == ref.shape == shape
    np.testing.assert_array_equal(ours, ref)  # array_equal treats NaN == NaN


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_quantized_weights_match_gguf_py_and_round_trip(qtype):
    gen = torch.Generator().manual_seed(7)
    shape = (4, 3, 2 * GGUF_BLOCK[qtype][0] if GGUF_BLOCK[qtype][0] > 1 else 64)
    w = torch.randn(shape, generator=gen)
    raw = quantize_gguf(w, qtype)
    assert raw.dtype == np.uint8 and raw.nbytes == gguf_nbytes(qtype, shape)
    ref = gguf.quants.dequantize(raw, GT[qtype])
    ours = _ours(raw, qtype, shape)
    np.testing.assert_array_equal(ours.numpy(), ref)
    rel = ((ours - w).norm() / w.norm()).item()
    assert rel <= ROUND_TRIP_BOUND[qtype], (qtype, rel)


# Relative Frobenius error bounds on Gaussian weights: about 1.3x what was measured on 8x512
# weights (F16 0.02 %, BF16 0.17 %, Q8_0 0.54 %, Q4_0 8.6 %, Q4_1 7.8 %, Q5_0 4.3 %, Q5_1 3.8 %,
# MXFP4 11.3 %, NVFP4 9.6 %, and for our simple K-quant encoders Q2_K 32 %, Q3_K 15.6 %,
# Q4_K 7.8 %, Q5_K 3.8 %, Q6_K 1.9 %), consistent with docs/formats.md, "Expected quantization error".
ROUND_TRIP_BOUND = {
    "F32": 0.0, "F16": 3e-4, "BF16": 2.5e-3, "Q8_0": 0.008, "Q4_0": 0.12, "Q4_1": 0.11,
    "Q5_0": 0.06, "Q5_1": 0.055, "Q2_K": 0.42, "Q3_K": 0.21, "Q4_K": 0.105, "Q5_K": 0.052,
    "Q6_K": 0.026, "MXFP4": 0.15, "NVFP4": 0.13,
}


@pytest.mark.parametrize("qtype", K_QUANTS)
def test_k_quant_encoder_beats_the_next_lower_type(qtype):
    # Guards against an encoder that is decodable but wrong in a way that still looks "noisy".
    gen = torch.Generator().manual_seed(11)
    w = torch.randn(8, 512, generator=gen)
    errs = {t: (_ours(quantize_gguf(w, t), t, w.shape) - w).norm().item() for t in K_QUANTS}
    order = K_QUANTS.index(qtype)
    if order:
        assert errs[qtype] < 0.75 * errs[K_QUANTS[order - 1]]


def test_fp4_scale_bytes_cover_every_value_including_specials():
    # MXFP4 E8M0 0..255 (subnormal 2^-127 .. overflow) and NVFP4 UE4M3 0..255 (0x7F -> 0, bit 7 ignored).
    for qtype, scale_bytes in (("MXFP4", slice(0, 1)), ("NVFP4", slice(0, 4))):
        elems, nbytes = GGUF_BLOCK[qtype]
        raw = _random_blocks(qtype, (1, 256 * elems), seed=3).reshape(256, nbytes)
        raw[:, scale_bytes] = np.arange(256, dtype=np.uint8)[:, None]
        raw = raw.reshape(1, -1)
        with np.errstate(over="ignore"):  # E8M0 255 overflows to inf, in gguf-py as in ours
            ref = gguf.quants.dequantize(raw, GT[qtype])
        np.testing.assert_array_equal(_ours(raw, qtype, (1, 256 * elems)).numpy(), ref)


def test_expert_stack_shape_and_dtype():
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(2, 4, 256, generator=gen)
    raw = quantize_gguf(w, "Q4_K")
    out = _ours(raw.reshape(-1), "Q4_K", (2, 4, 256), dtype=torch.bfloat16)
    assert out.shape == (2, 4, 256) and out.dtype == torch.bfloat16
    ref = gguf.quants.dequantize(raw, GT.Q4_K)
    assert torch.equal(out, torch.from_numpy(ref).to(torch.bfloat16))


def test_nbytes():
    assert gguf_nbytes("Q4_K", (4096, 4096)) == 4096 * 16 * 144
    assert gguf_nbytes("gguf:q8_0", (3, 64)) == 3 * 2 * 34
    assert gguf_nbytes("F32", (7,)) == 28


def test_bad_inputs_raise_one_line_quant_errors():
    raw = torch.from_numpy(quantize_gguf(torch.randn(2, 256), "Q4_K"))
    cases = [
        (lambda: dequant_gguf(raw[:, :-1], "Q4_K", (2, 256), name="blk.0.attn_q.weight"),
         "GGUF tensor 'blk.0.attn_q.weight' (Q4_K, shape [2, 256]) has 286 bytes, expected 288"),
        (lambda: dequant_gguf(raw, "IQ2_XXS", (2, 256)), "GGUF tensor type IQ2_XXS is not supported"),
        (lambda: dequant_gguf(raw, "Q4_K", (1, 576)), "row length 576 is not a multiple of the block size 256"),
        (lambda: dequant_gguf(raw.to(torch.int16), "Q4_K", (2, 256)), "raw data must be a uint8 tensor"),
        (lambda: quantize_gguf(torch.randn(2, 100), "Q8_0"), "multiple of 32"),
    ]
    for call, fragment in cases:
        with pytest.raises(QuantError) as info:
            call()
        msg = str(info.value)
        assert fragment in msg and "\n" not in msg, msg
