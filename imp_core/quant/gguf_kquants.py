"""Block decoders for the GGUF K-quants (256-element super-blocks): Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.

Each ``decode_*`` takes ``blocks`` uint8 [n_blocks, block_bytes] and returns float32 [n_blocks, 256].
Layouts and formulas: gguf-py's ``quants.py`` (element ``e = 128h + 32j + i`` where stated). Float
operations are ordered as in gguf-py so results are bit-identical to it.
"""

from __future__ import annotations

import functools

import torch

from imp_core.quant.gguf_legacy import f16_field

QK_K = 256


def _shifts(values, device, shape) -> torch.Tensor:
    # made once per device: a host-to-device copy inside a CUDA-graph capture is not allowed
    return _shift_table(tuple(values), torch.device(device), tuple(shape))


@functools.lru_cache(maxsize=None)
def _shift_table(values: tuple, device: torch.device, shape: tuple) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8, device=device).reshape(shape)


def _crumbs(qs: torch.Tensor) -> torch.Tensor:
    """2-bit fields: uint8 [nb, 32*H] -> [nb, H, 4, 32]; field j of byte 32h+i is element 128h+32j+i."""
    nb = qs.shape[0]
    return (qs.reshape(nb, -1, 1, 32) >> _shifts([0, 2, 4, 6], qs.device, (1, 1, 4, 1))) & 3


def _bit_planes(qh: torch.Tensor) -> torch.Tensor:
    """uint8 [nb, 32] -> [nb, 8, 32]: plane p holds bit p of each byte."""
    nb = qh.shape[0]
    return ((qh.reshape(nb, 1, 32) >> _shifts(list(range(8)), qh.device, (1, 8, 1))) & 1)


def _nibble_pairs(qs: torch.Tensor) -> torch.Tensor:
    """uint8 [nb, 128] -> [nb, 8, 32]: sub-block 2c+n is nibble n of bytes 32c..32c+31."""
    nb = qs.shape[0]
    out = (qs.reshape(nb, 4, 1, 32) >> _shifts([0, 4], qs.device, (1, 1, 2, 1))) & 0x0F
    return out.reshape(nb, 8, 32)


def k4_scale_min(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 six-bit (scale, min) pairs of Q4_K/Q5_K from their 12 packed bytes, as float32 [nb, 8]."""
    s = scales.reshape(-1, 3, 4)
    lo_d, lo_m, hi = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([lo_d & 0x3F, (hi & 0x0F) | ((lo_d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([lo_m & 0x3F, (hi >> 4) | ((lo_m >> 2) & 0x30)], dim=-1)
    return sc.float(), mn.float()


def decode_q2_k(blocks: torch.Tensor) -> torch.Tensor:
    nb = blocks.shape[0]
    scales = blocks[:, 0:16]
    d = f16_field(blocks, 80)
    dmin = f16_field(blocks, 82)
    dl = (d * (scales & 0x0F).float()).reshape(nb, 16, 1)
    ml = (dmin * (scales >> 4).float()).reshape(nb, 16, 1)
    q = _crumbs(blocks[:, 16:80]).reshape(nb, 16, 16).float()
    return (dl * q - ml).reshape(nb, QK_K)


def decode_q3_k(blocks: torch.Tensor) -> torch.Tensor:
    nb = blocks.shape[0]
    hmask = blocks[:, 0:32]
    scales = blocks[:, 96:108]
    d = f16_field(blocks, 108)
    # 16 six-bit signed scales: low 4 bits in bytes 0..7 (low nibble for k<8, high for k>=8),
    # high 2 bits in bytes 8..11 (bit pair k//4 of byte 8 + k%4), stored +32.
    low = (scales[:, 0:8].reshape(nb, 1, 8) >> _shifts([0, 4], blocks.device, (1, 2, 1))).reshape(nb, 16)
    high = (scales[:, 8:12].reshape(nb, 1, 4) >> _shifts([0, 2, 4, 6], blocks.device, (1, 4, 1))).reshape(nb, 16)
    sc = ((low & 0x0F) | ((high & 0x03) << 4)).float() - 32.0
    dl = (d * sc).reshape(nb, 16, 1)
    ql = _crumbs(blocks[:, 32:96]).reshape(nb, 16, 16).float()
    # The high bit SUBTRACTS 4 when it is clear.
    hbit = _bit_planes(hmask).reshape(nb, 16, 16)
    q = ql - ((hbit ^ 1) << 2).float()
    return (dl * q).reshape(nb, QK_K)


def decode_q4_k(blocks: torch.Tensor) -> torch.Tensor:
    nb = blocks.shape[0]
    d = f16_field(blocks, 0)
    dmin = f16_field(blocks, 2)
    sc, mn = k4_scale_min(blocks[:, 4:16])
    dl = (d * sc).reshape(nb, 8, 1)
    ml = (dmin * mn).reshape(nb, 8, 1)
    q = _nibble_pairs(blocks[:, 16:144]).float()
    return (dl * q - ml).reshape(nb, QK_K)


def decode_q5_k(blocks: torch.Tensor) -> torch.Tensor:
    nb = blocks.shape[0]
    d = f16_field(blocks, 0)
    dmin = f16_field(blocks, 2)
    sc, mn = k4_scale_min(blocks[:, 4:16])
    dl = (d * sc).reshape(nb, 8, 1)
    ml = (dmin * mn).reshape(nb, 8, 1)
    q = (_nibble_pairs(blocks[:, 48:176]) | (_bit_planes(blocks[:, 16:48]) << 4)).float()
    return (dl * q - ml).reshape(nb, QK_K)


def decode_q6_k(blocks: torch.Tensor) -> torch.Tensor:
    nb = blocks.shape[0]
    ql = blocks[:, 0:128]
    qh = blocks[:, 128:192]
    scales = blocks[:, 192:208].contiguous().view(torch.int8).float()
    d = f16_field(blocks, 208)
    dl = (d * scales).reshape(nb, 16, 1)
    # low nibbles: element 128h+32j+i is nibble j//2 of ql[64h + 32(j%2) + i]
    lo = (ql.reshape(nb, 2, 1, 64) >> _shifts([0, 4], blocks.device, (1, 1, 2, 1))) & 0x0F
    lo = lo.reshape(nb, 8, 32)
    hi = _crumbs(qh).reshape(nb, 8, 32)
    q = ((lo | (hi << 4)).float() - 32.0).reshape(nb, 16, 16)
    return (dl * q).reshape(nb, QK_K)
