"""Reading Gemma-4 weights with their shapes checked, and the expert layouts.

Experts: fused 3-D as published (``experts.gate_up_proj`` [E, 2I, H], gate rows first, and
``experts.down_proj`` [E, H, I]; also GGUF's ``ffn_gate_up_exps`` / ``ffn_down_exps``), or one 2-D
Linear per expert and projection as quantized exports store them (``experts.{e}.{gate,up,down}_proj``,
ModelOpt and llm-compressor); quantized parts stay packed where the encoding allows
(imp_core.layers.expert_stack).

``router.per_expert_scale`` is a plain tensor in every layout but one: llama.cpp's NVFP4 conversion
folds it into each expert's down_proj global scale (``ffn_down_exps.scale``, read by the core as the
NVFP4 weight's sidecar), so the router then multiplies by one.
"""

from __future__ import annotations

from typing import Any

import torch

from imp_core.errors import CheckpointError
from imp_core.layers.expert_stack import concat_rows, stack_experts_packed


def _where(w: Any) -> str:
    ck = getattr(w, "checkpoint", None)
    return f"{ck.path}: " if ck is not None else ""


def checked(w: Any, name: str, shape: tuple[int, ...]) -> Any:
    """The tensor ``name``, refusing a shape other than the one the config implies."""
    t = w.get(name)
    if tuple(t.shape) != tuple(shape):
        raise CheckpointError(f"{_where(w)}tensor '{name}' has shape {list(t.shape)}, but config.json implies "
                              f"{list(shape)}")
    return t


def load_experts(w: Any, prefix: str, num_experts: int, hidden: int, inter: int) -> tuple[Any, Any]:
    """(gate_up [E, 2I, H], down [E, H, I]) of the layer ``prefix`` in either stored layout."""
    e, h, i = num_experts, hidden, inter
    fused, down = prefix + "experts.gate_up_proj", prefix + "experts.down_proj"
    if fused in w:
        return checked(w, fused, (e, 2 * i, h)), checked(w, down, (e, h, i))
    first = prefix + "experts.0.gate_proj.weight"
    if first not in w:
        raise CheckpointError(f"{_where(w)}no experts for '{prefix}' (expected '{fused}' or '{first}')")
    parts: dict[str, list[Any]] = {"gate": [], "up": [], "down": []}
    for x in range(e):
        p = f"{prefix}experts.{x}."
        parts["gate"].append(checked(w, p + "gate_proj.weight", (i, h)))
        parts["up"].append(checked(w, p + "up_proj.weight", (i, h)))
        parts["down"].append(checked(w, p + "down_proj.weight", (h, i)))
    gate = stack_experts_packed(parts["gate"], w.dtype)
    up = stack_experts_packed(parts["up"], w.dtype)
    return (concat_rows(gate, up, w.dtype, name=fused),
            stack_experts_packed(parts["down"], w.dtype, name=down))


def per_expert_scale(w: Any, prefix: str, num_experts: int) -> torch.Tensor:
    """The router's per-expert output scale [E], or ones where a GGUF NVFP4 file folded it."""
    name = prefix + "router.per_expert_scale"
    if name in w:
        return checked(w, name, (num_experts,))
    plan = getattr(w, "quant_plan", None)
    down = plan.tensors.get(prefix + "experts.down_proj") if plan is not None else None
    if down is not None and down.format == "gguf:NVFP4" and "global" in down.scale_tensors:
        return torch.ones(num_experts, dtype=w.dtype, device=w.device)
    raise CheckpointError(f"{_where(w)}missing tensor '{name}' (and the experts' down_proj carries no "
                          f"per-expert scale it could be folded into)")
