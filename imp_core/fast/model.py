"""The contract between the core and a family's fast decode step, and the binding entry point.

A family's ``Family.fast_model(model)`` returns a ``FastModel``: the reference model's weights
bound to kernels once (``fast.linear.bind_linear`` / ``bind_fused``, ``fast.experts.bind_experts``),
with one plan line per choice. ``FastModel.decoder(cache)`` makes a ``Decoder`` for one sequence:
its static workspace lives beside that cache, and ``decoder(token, pos)`` computes the logits of
one token with no allocation of its own, no host sync and no Python branch on device values,
so the generator can capture it (with the sampler) in one CUDA graph and replay it per token.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from loguru import logger

from imp_core.units import human_bytes


class Decoder(ABC):
    """One sequence's decode step on kernels."""

    #: when a list, the step appends the hidden state after every layer (imp check; eager only)
    trace: list | None = None
    #: imp check: the reference's routing per MoE layer, used instead of ours (consumed in layer
    #: order) so both paths compute the same experts; our own choices go to ``routes``
    forced_routes: list | None = None
    routes: list | None = None

    def setup(self, fast: "FastModel", cache: Any, hidden: int, vocab: int) -> dict[str, Any]:
        """The state every family's decoder holds: the residual stream and its normed copy [1, H],
        the logits [1, V], each layer's attention backend as the plan chose it when the decoder
        was made, and the split-K attention workspaces (made now, before any graph capture).
        Returns the bf16 tensor options on the model's device."""
        from imp_core.fast import ops

        self.f, self.cache = fast, cache
        bf16 = dict(dtype=torch.bfloat16, device=fast.model.device)
        self.resid = torch.empty(1, hidden, **bf16)
        self.normed = torch.empty(1, hidden, **bf16)
        self.logits = torch.empty(1, vocab, **bf16)
        self.backends = {i: fast.model.attention_for(i) for i in range(len(cache.layers))}
        self.plans = ops.AttentionPlans()
        for c in cache.layers:
            if hasattr(c, "slot_pos"):
                self.plans.get(c.k)
        return bf16

    def follow_routing(self, ids: torch.Tensor, weights: torch.Tensor) -> None:
        """Called by MoE layers right after routing: in a check, record our ids and take the
        reference's ids and weights instead. A no-op in runs (nothing set)."""
        if self.forced_routes is None:
            return
        self.routes.append(ids.clone())
        ref_ids, ref_weights = self.forced_routes.pop(0)
        ids.copy_(ref_ids.reshape(ids.shape).to(ids.dtype))
        weights.copy_(ref_weights.reshape(weights.shape).to(weights.dtype))

    @abstractmethod
    def __call__(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """token [1, 1] long and pos [1] long (the token's position), both device buffers ->
        logits [1, V] (a static buffer, overwritten by the next call)."""


class FastModel(ABC):
    """A family's weights bound to kernels (see module doc)."""

    #: (label, choice - reason) lines for the resolved plan, grouped by the family
    plan: list[tuple[str, str]]

    @abstractmethod
    def decoder(self, cache: Any) -> Decoder:
        """A decoder whose workspace serves ``cache`` (a cache from ``model.new_cache``)."""

    @abstractmethod
    def weight_bytes_per_token(self) -> int:
        """Weight bytes one decode step reads (routed experts only, for MoE)."""


def group_choices(choices: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Plan lines for per-layer choices: identical (role, text) pairs become one counted line."""
    counts: dict[tuple[str, str], int] = {}
    for role, text in choices:
        counts[(role, text)] = counts.get((role, text), 0) + 1
    return [(f"fast {role}" + (f" (x{n})" if n > 1 else ""), text) for (role, text), n in counts.items()]


@dataclass
class FastPath:
    """The bound fast path of one run: what the generator asks for a decoder per sequence."""

    model: FastModel
    plan: list[tuple[str, str]] = field(default_factory=list)
    warm_seconds: float = 0.0

    def decoder(self, cache: Any) -> Decoder:
        return self.model.decoder(cache)


def bind_fast_path(family: Any, model: Any, *, warm: bool = True) -> FastPath:
    """Bind ``model``'s weights to kernels through the family, then compile every kernel
    specialisation with one step on a scratch cache (so no compilation happens later, during
    graph capture or timing)."""
    t0 = time.perf_counter()
    fast = family.fast_model(model)
    path = FastPath(fast, list(fast.plan))
    path.plan.append(("fast weights", f"{human_bytes(fast.weight_bytes_per_token())} read per decoded token"))
    if warm:
        scratch = model.new_cache(1, 32)
        step = fast.decoder(scratch)
        dev = model.device
        step(torch.zeros((1, 1), dtype=torch.long, device=dev), torch.zeros(1, dtype=torch.long, device=dev))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        del step, scratch
    path.warm_seconds = time.perf_counter() - t0
    logger.debug("fast path bound and warmed in {:.2f} s", path.warm_seconds)
    return path
