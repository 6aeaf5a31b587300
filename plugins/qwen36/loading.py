"""Reading Qwen3.5/3.6 weights with their shapes checked against the config, and the expert
layouts (fused 3-D as published in BF16, split gate/up stacks as GGUF stores them, or per-expert
2-D as quantized exports store them)."""

from __future__ import annotations

from typing import Any


from imp_core.errors import CheckpointError
from imp_core.layers.expert_stack import concat_rows, stack_experts_packed


def _where(w: Any) -> str:
    ck = getattr(w, "checkpoint", None)
    return str(ck.path) if ck is not None else "synthetic weights"


def get(w: Any, name: str, shape: tuple[int, ...], **kw: Any) -> Any:
    """``w.get(name)`` (dense tensor or QTensor), its shape checked against the config's.

    The check is on the tensor as the model sees it (logical shape of a packed weight, and after
    a GGUF converter transform such as the conv1d unsqueeze).
    """
    if name not in w:
        raise CheckpointError(f"{_where(w)}: missing tensor '{name}' (expected shape {tuple(shape)})")
    t = w.get(name, **kw)
    if tuple(t.shape) != tuple(shape):
        raise CheckpointError(f"{_where(w)}: tensor '{name}' has shape {tuple(t.shape)}, expected "
                              f"{tuple(shape)} from the config")
    return t


def load_experts(w: Any, prefix: str, num_experts: int, hidden: int, inter: int) -> tuple[Any, Any]:
    """(gate_up [E, 2I, H], down [E, H, I]) from ``{prefix}experts.*`` in any stored layout.

    - fused (the published BF16 layout): ``experts.gate_up_proj`` (rows 0..I-1 gate, I..2I-1 up per
      expert) and ``experts.down_proj``;
    - split (GGUF ``ffn_gate_exps`` / ``ffn_up_exps``): ``experts.gate_proj`` and ``experts.up_proj``
      [E, I, H] each, joined gate-then-up;
    - per expert (quantized exports): ``experts.{e}.{gate,up,down}_proj.weight``, stacked.
    Quantized parts stay packed where the encoding allows (imp_core.layers.expert_stack), so
    "on the fly" dequantisation keeps the experts at their packed size.
    """
    e, h, i = num_experts, hidden, inter
    fused = prefix + "experts.gate_up_proj"
    if fused in w:
        return get(w, fused, (e, 2 * i, h)), get(w, prefix + "experts.down_proj", (e, h, i))
    split = prefix + "experts.gate_proj"
    if split in w:
        gate = get(w, split, (e, i, h))
        up = get(w, prefix + "experts.up_proj", (e, i, h))
        return (concat_rows(gate, up, w.dtype, name=fused),
                get(w, prefix + "experts.down_proj", (e, h, i)))
    first = prefix + "experts.0.gate_proj.weight"
    if first not in w:
        raise CheckpointError(f"{_where(w)}: no experts for '{prefix}' (expected '{fused}' or '{first}')")
    parts: dict[str, list[Any]] = {"gate": [], "up": [], "down": []}
    for x in range(e):
        p = f"{prefix}experts.{x}."
        parts["gate"].append(get(w, p + "gate_proj.weight", (i, h)))
        parts["up"].append(get(w, p + "up_proj.weight", (i, h)))
        parts["down"].append(get(w, p + "down_proj.weight", (h, i)))
    gate = stack_experts_packed(parts["gate"], w.dtype)
    up = stack_experts_packed(parts["up"], w.dtype)
    return (concat_rows(gate, up, w.dtype, name=fused),
            stack_experts_packed(parts["down"], w.dtype, name=prefix + "experts.down_proj"))
