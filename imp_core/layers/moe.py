"""Mixture-of-experts building blocks on the reference path.

Experts are stored fused, as transformers holds them: ``gate_up`` [E, 2I, H] (rows 0..I-1 are
gate, I..2I-1 are up) and ``down`` [E, H, I]. Two execution strategies compute the same thing:

- ``gather`` (few tokens, e.g. decode): gather the k chosen experts' weights per token and use
  batched matmuls. Static shapes, no host sync: capturable, and it reads exactly the routed
  experts' bytes, like the real decode.
- ``grouped`` (prefill on CUDA): the (token, expert) pairs sorted by expert on the device and
  each projection done as one grouped GEMM (``torch._grouped_mm``, offsets from a device-side
  count by scatter-add): no host sync, every expert's rows in one launch;
- ``gather_blocks`` (prefill on CUDA where torch has no grouped GEMM): ``gather`` over blocks of
  tokens, still without a host sync (it reads each token's experts, so it is slower than grouped);
- ``loop`` (prefill on the CPU, the reference): loop over the experts that received tokens (a
  host sync to find them, free on a CPU).

``moe_strategy`` is the rule, a pure function of the token count and what the device offers.

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
GATHER_BLOCK_BYTES = 512 * 2**20  # gathered expert weights per block of ``gather_blocks``
_GROUPED_OK: dict[tuple[str, torch.dtype], bool] = {}


def grouped_mm_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``torch._grouped_mm`` runs here (probed once per device type and dtype with a tiny
    problem checked against a plain matmul; False on a torch without it)."""
    key = (device.type, dtype)
    if key not in _GROUPED_OK:
        ok = hasattr(torch, "_grouped_mm")
        if ok:
            try:
                a = torch.randn(32, 64, device=device).to(dtype)
                b = torch.randn(2, 16, 64, device=device).to(dtype)
                offs = torch.tensor([16, 32], dtype=torch.int32, device=device)
                y = torch._grouped_mm(a, b.transpose(-2, -1), offs=offs)
                ref = torch.cat((a[:16] @ b[0].T, a[16:] @ b[1].T))
                ok = bool(torch.allclose(y.float(), ref.float(), rtol=2e-2, atol=2e-1))
            except (RuntimeError, NotImplementedError, TypeError):
                ok = False
        _GROUPED_OK[key] = ok
    return _GROUPED_OK[key]


def moe_strategy(tokens: int, device_type: str, grouped_ok: bool) -> tuple[str, str]:
    """(strategy, reason) for routed experts over ``tokens`` tokens."""
    if tokens <= GATHER_MAX_TOKENS:
        return "gather", f"{tokens} token(s) <= {GATHER_MAX_TOKENS}: gathered expert weights, batched matmuls"
    if device_type == "cuda" and grouped_ok:
        return "grouped", "tokens sorted by expert on the device, one grouped GEMM per projection (no host sync)"
    if device_type == "cuda":
        return "gather_blocks", ("torch._grouped_mm unavailable here: the routed experts' weights gathered per "
                                 "block of tokens (no host sync; reads each token's experts)")
    return "loop", "reference loop over the routed experts"


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
        self.prefill_dense: dict[str, torch.Tensor] = {}  # Phase 3b's dense copies of packed stacks

    def _weight(self, attr: str, dtype: torch.dtype) -> torch.Tensor:
        copy = self.prefill_dense.get(attr)
        if copy is not None and copy.dtype == dtype:
            return copy
        return dense_weight(getattr(self, attr), dtype)

    def _weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return self._weight("gate_up", dtype), self._weight("down", dtype)

    def __call__(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x [N, H], ids [N, k], weights [N, k] -> [N, H] in x's dtype."""
        # probed only for multi-token calls: the probe allocates and syncs once (never in a decode step)
        grouped_ok = x.shape[0] > GATHER_MAX_TOKENS and x.is_cuda and grouped_mm_available(x.device, x.dtype)
        strategy, _ = moe_strategy(x.shape[0], x.device.type, grouped_ok)
        return getattr(self, strategy)(x, ids, weights)

    def _combine(self, y: torch.Tensor, weights: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return (y * weights[..., None]).sum(dim=1).to(dtype)

    def gather(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
               dense: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        gate_up, down = dense if dense is not None else self._weights(x.dtype)
        n, k = ids.shape
        gu = torch.matmul(gate_up[ids], x[:, None, :, None]).squeeze(-1)  # [N, k, 2I]
        g, u = gu[..., :self.intermediate], gu[..., self.intermediate:]
        h = self.act(g) * u
        y = torch.matmul(down[ids], h[..., None]).squeeze(-1)  # [N, k, H]
        return self._combine(y, weights, x.dtype)

    def grouped(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        gate_up, down = self._weights(x.dtype)
        n, k = ids.shape
        flat = ids.reshape(-1).long()
        order = torch.argsort(flat, stable=True)
        # counts by scatter_add: torch.bincount on CUDA reads the ids' min and max on the host
        counts = torch.zeros(self.num_experts, dtype=torch.int64, device=x.device)
        counts.scatter_add_(0, flat, torch.ones_like(flat))
        offs = counts.cumsum(0).to(torch.int32)
        gu = torch._grouped_mm(x[order // k], gate_up.transpose(-2, -1), offs=offs)  # [N*k, 2I]
        h = self.act(gu[:, :self.intermediate]) * gu[:, self.intermediate:]
        y_sorted = torch._grouped_mm(h, down.transpose(-2, -1), offs=offs)  # [N*k, H]
        y = torch.empty_like(y_sorted)
        y[order] = y_sorted
        return self._combine(y.view(n, k, -1), weights, x.dtype)

    def gather_blocks(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``gather`` over blocks of tokens sized so the gathered weights stay near
        ``GATHER_BLOCK_BYTES``: static shapes, no host sync, at the cost of reading each token's
        experts (the fallback where no grouped GEMM exists)."""
        n, k = ids.shape
        per_token = k * 3 * self.intermediate * x.shape[1] * x.element_size()
        block = max(1, GATHER_BLOCK_BYTES // per_token)
        dense = self._weights(x.dtype)  # dequantised once for all blocks
        return torch.cat([self.gather(x[s:s + block], ids[s:s + block], weights[s:s + block], dense)
                          for s in range(0, n, block)])

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
