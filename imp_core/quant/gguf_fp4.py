"""GGUF's 4-bit float blocks: MXFP4 (32 elements, E8M0 scale) and NVFP4 (64 elements, 4 UE4M3 scales).

ggml stores E2M1 doubled as small integers and halves the block scale (docs/formats.md, "Element formats");
we decode the same way so results are bit-identical to gguf-py/ggml. Nibble order is
first-half/second-half within each (sub-)block, NOT the even/odd order of HF NVFP4 checkpoints.
GGUF NVFP4's per-tensor ``.scale`` is not part of the block; callers multiply it afterwards.
"""

from __future__ import annotations

import torch

from imp_core.errors import QuantError
from imp_core.quant.fp4 import unpack_fp4_codes
from imp_core.quant.gguf_legacy import low_high_nibbles
from imp_core.quant.tables import cached_table, ue4m3_ggml_table

# kvalues_mxfp4: 2 * E2M1 value of each code.
KVALUES_DOUBLED = (0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12)


def _kvalues(device) -> torch.Tensor:
    return cached_table("kvalues_doubled", device, lambda: torch.tensor(KVALUES_DOUBLED, dtype=torch.float32))


def _e8m0_half(device) -> torch.Tensor:
    # ggml_e8m0_to_fp32_half: 2^(e-128) for every e (e=0 and 1 are float32 subnormals).
    return cached_table(
        "e8m0_half",
        device,
        lambda: torch.pow(2.0, torch.arange(256, dtype=torch.float64) - 128.0).to(torch.float32),
    )


def decode_mxfp4(blocks: torch.Tensor) -> torch.Tensor:
    """uint8 [nb, 17] -> float32 [nb, 32]: ``e:u8, qs[16]``; low nibbles are elements 0..15."""
    d = _e8m0_half(blocks.device)[blocks[:, 0].long()].unsqueeze(-1)
    codes = low_high_nibbles(blocks[:, 1:17]).long()
    return d * _kvalues(blocks.device)[codes]


def decode_nvfp4(blocks: torch.Tensor) -> torch.Tensor:
    """uint8 [nb, 36] -> float32 [nb, 64]: ``d[4]:UE4M3, qs[32]``; sub-block k uses qs[8k..8k+7]."""
    nb = blocks.shape[0]
    d = (ue4m3_ggml_table(blocks.device)[blocks[:, 0:4].long()] * 0.5).reshape(nb, 4, 1)
    qs = blocks[:, 4:36].reshape(nb, 4, 8)
    codes = torch.cat([qs & 0x0F, qs >> 4], dim=-1).long()
    return (d * _kvalues(blocks.device)[codes]).reshape(nb, 64)


def hf_nvfp4_to_gguf_blocks(codes: torch.Tensor, block_scale: torch.Tensor) -> torch.Tensor:
    """Repack HF NVFP4 (uint8 [N, K/2] even/odd nibbles, float8_e4m3fn [N, K/16]) into GGUF NVFP4
    blocks, uint8 [N, K/64 * 36]: the sign bit of each E4M3 scale is dropped (UE4M3) and the nibbles
    are reordered to ggml's first-half/second-half order, as llama.cpp's converter does
    (docs/formats.md, "NVFP4 inside GGUF"). The global scale is not part of the blocks. Requires K % 64 == 0.
    """
    if codes.dtype != torch.uint8 or block_scale.dtype != torch.float8_e4m3fn:
        raise QuantError("hf_nvfp4_to_gguf_blocks expects uint8 codes and float8_e4m3fn block scales")
    n, k = codes.shape[0], codes.shape[-1] * 2
    if k % 64:
        raise QuantError(f"GGUF NVFP4 needs rows that are a multiple of 64 elements, got K={k}")
    elems = unpack_fp4_codes(codes).to(torch.uint8).reshape(n, k // 64, 4, 16)
    qs = elems[..., :8] | (elems[..., 8:] << 4)  # [N, K/64, 4, 8]
    d = (block_scale.contiguous().view(torch.uint8) & 0x7F).reshape(n, k // 64, 4)
    return torch.cat([d, qs.reshape(n, k // 64, 32)], dim=-1).reshape(n, k // 64 * 36)
