"""Mixture-of-experts building blocks on the reference path.

Experts are stored fused, as transformers holds them: ``gate_up`` [E, 2I, H] (rows 0..I-1 are
gate, I..2I-1 are up) and ``down`` [E, H, I]. Two execution strategies compute the same thing:

- ``gather`` (few tokens, e.g. decode): gather the k chosen experts' weights per token and use
  batched matmuls. Static shapes, no host sync: capturable, and it reads exactly the routed
  experts' bytes, like the real decode.
- ``loop`` (prefill): loop over the experts that received tokens (a host sync to find them).

Combination follows transformers' grouped_mm path: each expert output is multiplied by its
routing weight (fp32 weights give fp32 products), the k contributions are summed, and the sum
is cast once to the activation dtype.
"""

from __future__ import annotations

from typing import Any

import torch

from imp_core.layers.linear import dense_weight
from imp_core.layers.mlp import activation

GATHER_MAX_TOKENS = 4


class RouteTrace:
    """The routing of each MoE layer in one forward, in layer order, while ``active`` (for
    ``imp check``: routing is a discrete choice, so the fast path is compared with the reference
    under the reference's routing, and the routing itself is compared apart)."""

    active: list | None = None

    @classmethod
    def record(cls, ids: torch.Tensor, weights: torch.Tensor) -> None:
        if cls.active is not None:
            cls.active.append((ids.detach().clone(), weights.detach().clone()))


def softmax_topk(logits: torch.Tensor, k: int, *, renormalize: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 softmax over experts, top-k, optional renormalisation -> (weights fp32, ids)."""
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    weights, ids = torch.topk(probs, k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def stack_experts(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Per-expert 2-D weights -> one [E, ...] tensor (the per-expert layout of quantized exports)."""
    return torch.stack(tensors, dim=0)


class Experts:
    """The routed experts of one MoE layer: y = Σ_k w_k · down_e(act(gate_e x) ⊙ up_e x)."""

    def __init__(self, gate_up: Any, down: Any, act: str = "silu") -> None:
        self.gate_up = gate_up
        self.down = down
        self.act = activation(act)
        self.num_experts = int(gate_up.shape[0])
        self.intermediate = int(gate_up.shape[1]) // 2

    def _weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return dense_weight(self.gate_up, dtype), dense_weight(self.down, dtype)

    def __call__(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x [N, H], ids [N, k], weights [N, k] -> [N, H] in x's dtype."""
        if x.shape[0] <= GATHER_MAX_TOKENS:
            return self.gather(x, ids, weights)
        return self.loop(x, ids, weights)

    def _combine(self, y: torch.Tensor, weights: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return (y * weights[..., None]).sum(dim=1).to(dtype)

    def gather(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        gate_up, down = self._weights(x.dtype)
        n, k = ids.shape
        gu = torch.matmul(gate_up[ids], x[:, None, :, None]).squeeze(-1)  # [N, k, 2I]
        g, u = gu[..., :self.intermediate], gu[..., self.intermediate:]
        h = self.act(g) * u
        y = torch.matmul(down[ids], h[..., None]).squeeze(-1)  # [N, k, H]
        return self._combine(y, weights, x.dtype)

    def loop(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        gate_up, down = self._weights(x.dtype)
        n, k = ids.shape
        y = torch.zeros(n, k, x.shape[1], dtype=x.dtype, device=x.device)
        for e in torch.unique(ids).tolist():
            tok, slot = torch.nonzero(ids == e, as_tuple=True)
            gu = x[tok] @ gate_up[e].T
            h = self.act(gu[:, :self.intermediate]) * gu[:, self.intermediate:]
            y[tok, slot] = h @ down[e].T
        return self._combine(y, weights, x.dtype)
