"""Decode tables and E2M1 rounding against independent references (torch float8, gguf-py, brute force)."""

import math

import numpy as np
import torch
from gguf.quants import NVFP4 as GGUF_NVFP4

from imp_core.quant.fp4 import pack_fp4_codes, round_to_e2m1_codes, unpack_fp4_codes
from imp_core.quant.tables import e2m1_table, e4m3_table, e8m0_table, ue4m3_ggml_table


def test_e4m3_table_matches_torch_float8_cast_for_all_bytes():
    codes = torch.arange(256, dtype=torch.uint8)
    ref = codes.view(torch.float8_e4m3fn).float()
    ours = e4m3_table()
    assert torch.equal(torch.isnan(ours), torch.isnan(ref))
    assert torch.isnan(ours).sum() == 2  # 0x7F and 0xFF, no infinities
    finite = ~torch.isnan(ref)
    assert torch.equal(ours[finite], ref[finite])
    assert ours[finite].abs().max() == 448.0


def test_ue4m3_table_matches_gguf_py_for_all_bytes():
    codes = np.arange(256, dtype=np.uint8)
    ref = GGUF_NVFP4.ue4m3_to_fp32(codes).astype(np.float32) * 2  # gguf-py folds in a 0.5
    np.testing.assert_array_equal(ue4m3_ggml_table().numpy(), ref)


def test_e8m0_table_is_power_of_two():
    ours = e8m0_table()
    for e in (0, 1, 2, 100, 127, 128, 200, 254):
        assert ours[e].item() == math.ldexp(1.0, e - 127)
    assert math.isinf(ours[255].item())


def test_e2m1_table_signs_and_magnitudes():
    t = e2m1_table()
    assert t[:8].tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert torch.equal(t[8:], -t[:8])


def test_round_to_e2m1_is_nearest_with_ties_to_even_code():
    gen = torch.Generator().manual_seed(1)
    boundaries = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.75, 7.0, -9.0])
    x = torch.cat([torch.randn(4000, generator=gen) * 3, boundaries])
    codes = round_to_e2m1_codes(x).long()
    got = e2m1_table()[codes]
    # brute force: distance to every representable value, ties -> even code index
    mags = e2m1_table()[:8]
    dist = (x.abs().clamp(max=6).unsqueeze(-1) - mags).abs()
    best = dist.min(dim=-1, keepdim=True).values
    candidates = (dist == best).long() * (1 + (torch.arange(8) % 2 == 0).long())  # prefer even
    idx = candidates.argmax(dim=-1)
    expected = torch.where(x < 0, -mags[idx], mags[idx])
    assert torch.equal(got, expected)
    assert torch.equal((codes >> 3) == 1, x < 0)


def test_pack_unpack_roundtrip_even_element_low_nibble():
    gen = torch.Generator().manual_seed(2)
    codes = torch.randint(0, 16, (5, 64), generator=gen)
    packed = pack_fp4_codes(codes)
    assert torch.equal(packed & 0x0F, codes[:, 0::2].to(torch.uint8))
    assert torch.equal(packed >> 4, codes[:, 1::2].to(torch.uint8))
    assert torch.equal(unpack_fp4_codes(packed), codes)
