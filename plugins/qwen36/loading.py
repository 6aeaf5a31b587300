"""Reading Qwen3.5/3.6 weights with their shapes checked against config.json, and the expert
layouts (fused 3-D as published in BF16, or per-expert 2-D as quantized exports store them)."""

from __future__ import annotations

from typing import Any

import torch

from imp_core.errors import CheckpointError
from imp_core.layers.linear import dense_weight
from imp_core.layers.moe import stack_experts


def _where(w: Any) -> str:
    ck = getattr(w, "checkpoint", None)
    return str(ck.path) if ck is not None else "synthetic weights"


def _is_dense(w: Any, name: str) -> bool:
    plan = getattr(w, "quant_plan", None)
    return plan is None or plan.format_of(name) == "dense"


def get(w: Any, name: str, shape: tuple[int, ...], **kw: Any) -> Any:
    """``w.get(name)`` after checking a dense tensor's stored shape against the config's."""
    if name not in w:
        raise CheckpointError(f"{_where(w)}: missing tensor '{name}' (expected shape {tuple(shape)})")
    if _is_dense(w, name):
        stored = tuple(w.shape(name))
        if stored != tuple(shape):
            raise CheckpointError(f"{_where(w)}: tensor '{name}' has shape {stored}, expected "
                                  f"{tuple(shape)} from config.json")
    return w.get(name, **kw)


def load_experts(w: Any, prefix: str, num_experts: int, hidden: int, inter: int) -> tuple[Any, Any]:
    """(gate_up [E, 2I, H], down [E, H, I]) from ``{prefix}experts.*`` in either layout.

    Fused: ``experts.gate_up_proj`` (rows 0..I-1 gate, I..2I-1 up per expert) and
    ``experts.down_proj``. Per expert: ``experts.{e}.{gate,up,down}_proj.weight``, concatenated
    gate-then-up and stacked (quantized per-expert weights are dequantised to the model dtype
    here; the fast path keeps its own packed copies).
    """
    fused = prefix + "experts.gate_up_proj"
    if fused in w:
        gate_up = get(w, fused, (num_experts, 2 * inter, hidden))
        down = get(w, prefix + "experts.down_proj", (num_experts, hidden, inter))
        return gate_up, down
    first = prefix + "experts.0.gate_proj.weight"
    if first not in w:
        raise CheckpointError(f"{_where(w)}: no experts for '{prefix}' (expected '{fused}' or '{first}')")

    def dense(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        t = get(w, name, shape)
        return t if isinstance(t, torch.Tensor) else dense_weight(t, w.dtype)

    gate_up, down = [], []
    for e in range(num_experts):
        p = f"{prefix}experts.{e}."
        gate = dense(p + "gate_proj.weight", (inter, hidden))
        up = dense(p + "up_proj.weight", (inter, hidden))
        gate_up.append(torch.cat((gate, up), dim=0))
        down.append(dense(p + "down_proj.weight", (hidden, inter)))
    return stack_experts(gate_up), stack_experts(down)
