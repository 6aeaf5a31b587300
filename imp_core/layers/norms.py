"""RMSNorm variants on the reference path.

The three families differ in where the weight multiply happens and whether the weight is
zero-centred; each difference moves logits at the bf16-ulp level, so each is explicit:

- ``llama``: ``w * (x̂ in fp32).to(act)`` - the multiply happens in the activation dtype (Mistral).
- ``fp32``: ``(x̂ * w in fp32).to(act)`` - the multiply happens in fp32 (Gemma-4's plain weight).
- ``fp32`` with ``offset=1.0``: ``(x̂ * (1 + w) in fp32).to(act)`` - Qwen's zero-centred norm.
- ``weight=None``: the weightless norm (Gemma-4's v_norm and router input).
"""

from __future__ import annotations

import torch


def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x̂ = x / sqrt(mean(x²) + eps), in fp32."""
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float, *, mode: str = "fp32",
             offset: float = 0.0) -> torch.Tensor:
    """RMSNorm over the last dim; returns the input's dtype. See the module docstring for modes."""
    n = rms_normalize(x, eps)
    if weight is None:
        return n.to(x.dtype)
    if mode == "llama":
        w = weight if offset == 0.0 else weight + offset
        return w * n.to(x.dtype)
    if mode == "fp32":
        w = weight.float()
        if offset:
            w = w + offset
        return (n * w).to(x.dtype)
    raise ValueError(f"unknown rms_norm mode {mode!r}")


class RMSNorm:
    """A norm bound to its weight and flavour."""

    def __init__(self, weight: torch.Tensor | None, eps: float, *, mode: str = "fp32",
                 offset: float = 0.0) -> None:
        self.weight, self.eps, self.mode, self.offset = weight, eps, mode, offset

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, mode=self.mode, offset=self.offset)
