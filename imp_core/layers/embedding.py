"""Token embedding and the output head."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imp_core.layers.linear import Linear


class Embedding:
    """h = E[ids] (optionally times a scale that is first cast to the weight dtype)."""

    def __init__(self, weight: torch.Tensor, scale: float | None = None) -> None:
        self.weight = weight
        self.scale = scale

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        h = F.embedding(ids, self.weight)
        if self.scale is not None:
            h = h * torch.tensor(self.scale, dtype=torch.float32).to(h.dtype)
        return h


class LMHead(Linear):
    """logits = h @ W.T, optionally soft-capped: cap * tanh(logits / cap)."""

    def __init__(self, weight, softcap: float | None = None) -> None:
        super().__init__(weight)
        self.softcap = softcap

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().__call__(x)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits
