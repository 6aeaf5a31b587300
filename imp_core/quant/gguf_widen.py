"""Exact widening of GGUF Q4_0 / Q5_0 blocks to Q8_0 (phase 3a on the decode fast path).

All three types hold 32 elements per block with one fp16 scale d and value d * q. Q4_0's codes
are q = nibble - 8 in [-8, 7] and Q5_0's are q = (nibble | high bit << 4) - 16 in [-16, 15]; both
fit Q8_0's int8 codes with the same d, so the widened block decodes to exactly the same values
(34 bytes instead of 18 or 22). llama-quantize writes Q5_0 where a row does not fill whole
256-element K-quant blocks (e.g. Gemma-4's experts' down rows of 704), so these are common in
Q4_K_M files.
"""

from __future__ import annotations

import torch

from imp_core.quant.gguf_legacy import bits_of_u32, low_high_nibbles

WIDENS_TO_Q8_0 = ("Q4_0", "Q5_0")
_BYTES = {"Q4_0": 18, "Q5_0": 22}


def widen_to_q8_0(raw: torch.Tensor, qtype: str) -> torch.Tensor:
    """Raw ``qtype`` bytes (uint8, any shape whose last dim holds whole blocks) -> Q8_0 bytes with
    the same leading shape."""
    lead = raw.shape[:-1]
    blocks = raw.reshape(-1, _BYTES[qtype])
    if qtype == "Q4_0":
        codes = low_high_nibbles(blocks[:, 2:18]).to(torch.int16) - 8
    else:
        codes = (low_high_nibbles(blocks[:, 6:22]) | (bits_of_u32(blocks[:, 2:6]) << 4)).to(torch.int16) - 16
    out = torch.empty(blocks.shape[0], 34, dtype=torch.uint8, device=raw.device)
    out[:, :2] = blocks[:, :2]  # the fp16 scale d, unchanged
    out[:, 2:] = codes.to(torch.int8).view(torch.uint8)
    return out.reshape(*lead, -1)
