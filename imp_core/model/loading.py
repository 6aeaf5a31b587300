"""Reading a family's weights: every tensor's shape checked against the parsed config, and the
expert layouts every MoE family meets.

Families call ``checked`` for each tensor they read, so a checkpoint whose tensors disagree with
its config.json (or GGUF metadata) is refused at load, naming the tensor, both shapes and the
config keys the expected shape came from, instead of running with wrong weights.
"""

from __future__ import annotations

from typing import Any

from imp_core.errors import CheckpointError
from imp_core.layers.expert_stack import concat_rows, stack_experts_packed


def source_of(w: Any) -> str:
    """Where the weights come from, for error messages."""
    ck = getattr(w, "checkpoint", None)
    return str(ck.path) if ck is not None else "synthetic weights"


def checked(w: Any, name: str, shape: tuple[int, ...], *, keys: str = "", **kw: Any) -> Any:
    """``w.get(name)`` (dense tensor or QTensor), refusing a shape other than ``shape``.

    The check is on the tensor as the model sees it (the logical shape of a packed weight, after
    any GGUF converter transform). ``keys`` names the config keys ``shape`` was derived from.
    """
    config = getattr(w, "config", None)
    if name not in w:
        src = f" (from {keys})" if keys else _config_source(config, shape)
        raise CheckpointError(f"{source_of(w)}: missing tensor '{name}' (expected shape {list(shape)}{src})")
    t = w.get(name, **kw)
    if tuple(t.shape) != tuple(shape):
        src = f" (from {keys})" if keys else _config_source(config, shape, tuple(t.shape))
        raise CheckpointError(f"{source_of(w)}: tensor '{name}' has shape {list(t.shape)}, expected "
                              f"{list(shape)}{src}")
    return t


def _config_source(config: Any, shape: tuple[int, ...], got: tuple[int, ...] | None = None) -> str:
    """" (from the config: dim 1 = 384: intermediate_size)": the config keys an expected dim that
    the tensor does not have equals, for calls that do not name their keys."""
    fields = getattr(config, "__dict__", {})
    ints = {k: v for k, v in fields.items() if isinstance(v, int) and not isinstance(v, bool) and v > 1}
    parts = []
    for i, dim in enumerate(shape):
        if got is not None and len(got) == len(shape) and got[i] == dim:
            continue
        names = [k for k, v in ints.items() if v == dim] or [f"2 x {k}" for k, v in ints.items() if 2 * v == dim]
        if names:
            parts.append(f"dim {i} = {dim}: {' or '.join(names[:2])}")
    return f" (from the config: {'; '.join(parts)})" if parts else " from the config"


def load_experts(w: Any, prefix: str, num_experts: int, hidden: int, inter: int,
                 *, keys: str = "") -> tuple[Any, Any]:
    """(gate_up [E, 2I, H], down [E, H, I]) from ``{prefix}experts.*`` in any stored layout.

    - fused (the published BF16 layout): ``experts.gate_up_proj`` (rows 0..I-1 gate, I..2I-1 up per
      expert) and ``experts.down_proj``;
    - split (GGUF ``ffn_gate_exps`` / ``ffn_up_exps``): ``experts.gate_proj`` and ``experts.up_proj``
      [E, I, H] each, joined gate-then-up;
    - per expert (quantized exports): ``experts.{e}.{gate,up,down}_proj.weight``, stacked.
    Quantized parts stay packed where the encoding allows (``imp_core.layers.expert_stack``), so
    on-the-fly dequantisation keeps the experts at their packed size.
    """
    e, h, i = num_experts, hidden, inter
    fused, down = prefix + "experts.gate_up_proj", prefix + "experts.down_proj"
    if fused in w:
        return checked(w, fused, (e, 2 * i, h), keys=keys), checked(w, down, (e, h, i), keys=keys)
    split = prefix + "experts.gate_proj"
    if split in w:
        gate = checked(w, split, (e, i, h), keys=keys)
        up = checked(w, prefix + "experts.up_proj", (e, i, h), keys=keys)
        return concat_rows(gate, up, w.dtype, name=fused), checked(w, down, (e, h, i), keys=keys)
    first = prefix + "experts.0.gate_proj.weight"
    if first not in w:
        raise CheckpointError(f"{source_of(w)}: no experts for '{prefix}' (expected '{fused}' or '{first}')")
    parts: dict[str, list[Any]] = {"gate": [], "up": [], "down": []}
    for x in range(e):
        p = f"{prefix}experts.{x}."
        parts["gate"].append(checked(w, p + "gate_proj.weight", (i, h), keys=keys))
        parts["up"].append(checked(w, p + "up_proj.weight", (i, h), keys=keys))
        parts["down"].append(checked(w, p + "down_proj.weight", (h, i), keys=keys))
    gate = stack_experts_packed(parts["gate"], w.dtype)
    up = stack_experts_packed(parts["up"], w.dtype)
    return (concat_rows(gate, up, w.dtype, name=fused),
            stack_experts_packed(parts["down"], w.dtype, name=down))
