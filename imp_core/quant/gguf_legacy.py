"""Block decoders for the plain and 32-element GGUF types: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1.

Each ``decode_*`` takes ``blocks`` uint8 [n_blocks, block_bytes] and returns float32
[n_blocks, block_elems]. Layouts: docs/formats.md, "GGUF block types". The order of the float operations follows
gguf-py's numpy reference so results are bit-identical to it.
"""

from __future__ import annotations

import torch


def f16_field(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The little-endian fp16 at byte ``offset`` of every block, as float32 [n_blocks, 1]."""
    return blocks[:, offset : offset + 2].contiguous().view(torch.float16).float()


def low_high_nibbles(qs: torch.Tensor) -> torch.Tensor:
    """uint8 [nb, 16] -> uint8 [nb, 32]: the low nibbles are elements 0..15, the high 16..31."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=-1)


def bits_of_u32(qh: torch.Tensor) -> torch.Tensor:
    """uint8 [nb, 4] (one little-endian u32) -> uint8 [nb, 32] with bit i at column i."""
    shifts = torch.arange(8, dtype=torch.uint8, device=qh.device)
    return ((qh.unsqueeze(-1) >> shifts) & 1).flatten(-2)


def decode_f32(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.float32)


def decode_f16(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.float16).float()


def decode_bf16(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.bfloat16).float()


def decode_q8_0(blocks: torch.Tensor) -> torch.Tensor:
    d = f16_field(blocks, 0)
    qs = blocks[:, 2:34].contiguous().view(torch.int8).float()
    return qs * d


def decode_q4_0(blocks: torch.Tensor) -> torch.Tensor:
    d = f16_field(blocks, 0)
    q = low_high_nibbles(blocks[:, 2:18]).float() - 8.0
    return d * q


def decode_q4_1(blocks: torch.Tensor) -> torch.Tensor:
    d = f16_field(blocks, 0)
    m = f16_field(blocks, 2)
    q = low_high_nibbles(blocks[:, 4:20]).float()
    return d * q + m


def _q5_codes(qh: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    return (low_high_nibbles(qs) | (bits_of_u32(qh) << 4)).float()


def decode_q5_0(blocks: torch.Tensor) -> torch.Tensor:
    d = f16_field(blocks, 0)
    q = _q5_codes(blocks[:, 2:6], blocks[:, 6:22]) - 16.0
    return d * q


def decode_q5_1(blocks: torch.Tensor) -> torch.Tensor:
    d = f16_field(blocks, 0)
    m = f16_field(blocks, 2)
    q = _q5_codes(blocks[:, 4:8], blocks[:, 8:24])
    return d * q + m
