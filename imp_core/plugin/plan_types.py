"""Plain data passed between the core and plugins through the hooks.

Everything here is a frozen dataclass so that policy decisions are pure functions of these
values (and of settings), easy to pin in unit tests and to log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PHASES = ("0", "3a", "3b", "3-MoE")
"""The pre-dequant phases, in the order they run (docs/architecture.md, "Phases")."""


@dataclass(frozen=True)
class ArchitectureSpec:
    """What a plugin claims: checkpoint spellings mapped to a lazily imported family builder.

    ``builder`` is a ``"module:callable"`` string; the callable takes no arguments and returns
    a :class:`imp_core.model.family.Family`. It is imported only when a checkpoint of this family is
    opened, so registration stays cheap and side-effect free.
    """

    family: str
    builder: str
    hf_architectures: tuple[str, ...] = ()
    model_types: tuple[str, ...] = ()
    gguf_architectures: tuple[str, ...] = ()
    plugin: str = ""


@dataclass(frozen=True)
class AttentionLayerSpec:
    """The facts an attention backend needs to accept or decline one layer."""

    index: int
    kind: str  # "full" or "sliding"
    num_heads: int
    num_kv_heads: int
    head_dim: int
    v_head_dim: int | None = None
    sliding_window: int | None = None
    scale: float | None = None
    output_gate: bool = False
    logit_softcap: float | None = None


@dataclass(frozen=True)
class ModelInfo:
    """A family-neutral summary of a parsed model, seen by every policy hook."""

    family: str
    architecture: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    layer_kinds: tuple[str, ...]
    attention_layers: tuple[AttentionLayerSpec, ...]
    is_moe: bool = False
    num_experts: int = 0
    experts_per_token: int = 0
    quant_formats: frozenset[str] = frozenset()
    prequantized_nvfp4: bool = False
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class PhaseDecision:
    """Whether one pre-dequant phase runs, restricted to some tensor roles or not, and why."""

    phase: str
    enabled: bool
    reason: str
    roles: frozenset[str] | None = None  # None: every role the phase applies to
    decided_by: str = "core"


@dataclass(frozen=True)
class AttentionChoice:
    """The attention backend chosen for one layer, and why."""

    backend: str
    reason: str
    decided_by: str = "core"


@dataclass(frozen=True)
class SettingOverride:
    """A per-family default for one settings key (applied only where the user set nothing)."""

    key: str
    value: Any
    reason: str
