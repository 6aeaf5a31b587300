"""Counter-based randomness shared by the torch sampler and the device sampling kernel.

The uniform number for (seed, row, step, token id) is a 32-bit integer hash, so any
implementation that follows this module draws the same tokens: the engine's torch sampler calls
these functions, and ``imp_kernels.sample`` re-implements ``hash32`` / ``uniform_noise`` on the
device with the constants defined here.

Every intermediate stays below 2**63 (both multipliers are below 2**31 and operands are masked
to 32 bits), so the torch versions are exact in int64 on CPU and CUDA alike, with no reliance on
overflow; the step wraps at 2**32. Torch only: no numba import, no device code.
"""

from __future__ import annotations

import torch

__all__ = ["MASK32", "HASH_MUL1", "HASH_MUL2", "ROW_KEY_ADD", "NOISE_ADD", "hash32", "seed_row_keys",
           "uniform_noise"]

MASK32 = 0xFFFFFFFF
# [16 21f0aaad 15 735a2d97 15] from Wellons' hash prospector (the "splitmix32" finaliser)
HASH_MUL1 = 0x21F0AAAD
HASH_MUL2 = 0x735A2D97
ROW_KEY_ADD = 0x9E3779B9  # added when deriving a row's key from the seed key
NOISE_ADD = 0x6D2B79F5  # added before the last hash round of uniform_noise


def hash32(x):
    """A 32-bit bijective integer mixer; x in [0, 2**32). Works on Python ints and int64 tensors."""
    x = x ^ (x >> 16)
    x = (x * HASH_MUL1) & MASK32
    x = x ^ (x >> 15)
    x = (x * HASH_MUL2) & MASK32
    return x ^ (x >> 15)


def seed_row_keys(seed: int, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Per-row 32-bit keys derived from a 64-bit seed, [batch, 1] int64 (host-side, once)."""
    key = hash32(hash32(seed & MASK32) ^ ((seed >> 32) & MASK32))
    keys = [hash32((hash32(key ^ row) + ROW_KEY_ADD) & MASK32) for row in range(batch)]
    return torch.tensor(keys, dtype=torch.int64, device=device).view(batch, 1)


def uniform_noise(row_keys: torch.Tensor, step: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Uniform floats in (0, 1), fp32, one per element of ``token_ids`` ([B, C] int64).

    A pure function of (row key, step mod 2**32, token id): ``row_keys`` is [B, 1] from
    :func:`seed_row_keys`, ``step`` a 0-d int64 tensor. The value is
    ``(top 24 bits of the hash + 0.5) / 2**24``, exact in fp32, never 0 or 1.
    """
    h = hash32(row_keys ^ (step & MASK32))
    h = hash32(h ^ token_ids)
    h = hash32((h + NOISE_ADD) & MASK32)
    return ((h >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))
