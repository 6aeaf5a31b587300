"""Rotary position embeddings (rotate-half convention, as all three target families use).

Element i is paired with element i + R/2 of the rotated part (the first R dims of a head).
cos/sin are computed in fp32 from fp32 inverse frequencies and cast to the activation dtype
before use, exactly as transformers does; the rotation itself runs in the activation dtype.
"""

from __future__ import annotations

import torch


def default_inv_freq(theta: float, rotary_dim: int) -> torch.Tensor:
    """inv_freq[i] = theta^(-2i / rotary_dim), i < rotary_dim / 2 (fp32)."""
    return 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))


def proportional_inv_freq(theta: float, head_dim: int, rotated_pairs: int) -> torch.Tensor:
    """Frequencies over the whole head (denominator head_dim) with only the first pairs rotating.

    inv_freq[i] = theta^(-2i / head_dim) for i < rotated_pairs, 0 beyond (cos=1, sin=0 there).
    """
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    inv[rotated_pairs:] = 0.0
    return inv


class Rotary:
    """cos/sin tables for one rotary configuration, computed on demand for given positions."""

    def __init__(self, inv_freq: torch.Tensor, *, attention_scaling: float = 1.0) -> None:
        self.inv_freq = inv_freq.float()
        self.attention_scaling = attention_scaling
        self.rotary_dim = 2 * inv_freq.numel()

    def to(self, device: torch.device) -> "Rotary":
        self.inv_freq = self.inv_freq.to(device)
        return self

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T] (long, on device) -> cos, sin [T, rotary_dim] in ``dtype``."""
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.attention_scaling).to(dtype)
        sin = (emb.sin() * self.attention_scaling).to(dtype)
        return cos, sin


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` dims of x [B, H, T, D]; cos/sin are [T, R]."""
    r = cos.shape[-1]
    if r == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    rot, rest = x[..., :r], x[..., r:]
    return torch.cat((rot * cos + rotate_half(rot) * sin, rest), dim=-1)
