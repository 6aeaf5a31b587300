"""Gemma-4's answers to the policy hooks: pure functions of metadata, each with a one-line reason.

Attention: global layers have head_dim 512 (K=V, 8:1 GQA), sliding layers head_dim 256 with a
1024-token window. A backend that cannot serve head_dim 512 is declined for the global layers
and kept for the sliding ones, so one forward mixes backends by layer type; the reason names
what was declined, and is the same for every layer of a type so the plan groups them.

Phases (NVFP4-prequantized checkpoints only; otherwise the core's defaults stand):
- 3-MoE stays on: the NVFP4 experts become one contiguous buffer per layer and projection, which
  is what lets MoE decode route on the device with no host sync and be captured; switching it
  off with the rest of Gemma's restrictions cost imp's predecessor most of its decode speed
  (its Gemma-4 NVFP4 decode ran at 42 tok/s while 3-MoE was skipped).
- 3a/3b (attention-side weight forms) are restricted to the non-attention roles: attention
  projections keep one numeric form for prefill and decode (no dual path), since Gemma-4
  amplifies prefill/decode drift (residual outliers in the hundreds, as imp's predecessor found).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from imp_core.plugin.attention_registry import AttentionBackend
from imp_core.errors import ConfigError
from imp_core.plugin.plan_types import AttentionChoice, AttentionLayerSpec, ModelInfo, PhaseDecision

FAMILY = "gemma4"
#: tensor roles a pre-dequant phase can touch in a Gemma-4 layer stack
QUANT_ROLES = frozenset({"attention", "mlp", "experts", "lm_head"})
NON_ATTENTION_ROLES = QUANT_ROLES - {"attention"}


@dataclass(frozen=True)
class Gemma4AttentionLayerSpec(AttentionLayerSpec):
    """An attention layer described by this plugin (the hook answers only for these)."""

    k_eq_v: bool = False


def _describe_layer(layer: Gemma4AttentionLayerSpec) -> str:
    if layer.kind == "sliding":
        return f"sliding layer (head_dim {layer.head_dim}, window {layer.sliding_window})"
    kv = ", K=V" if layer.k_eq_v else ""
    return f"global layer (head_dim {layer.head_dim}, {layer.num_heads}/{layer.num_kv_heads} heads{kv})"


def attention_backend(layer: AttentionLayerSpec, candidates: list[str],
                      backends: Mapping[str, AttentionBackend], forced: str | None = None
                      ) -> AttentionChoice | None:
    """The backend for one Gemma-4 layer: the first candidate that serves its head_dim, with why.

    ``forced`` is the user's ``attention.backend`` when it is not ``auto`` (then the chain is
    that one backend, and the reason says so).
    """
    if not isinstance(layer, Gemma4AttentionLayerSpec):
        return None
    registry = backends

    def too_small(name: str) -> bool:
        spec = registry.get(name)
        return spec is not None and spec.max_head_dim is not None and spec.max_head_dim < layer.head_dim

    declined = [f"{n} (head_dim <= {s.max_head_dim})" for n, s in registry.items() if too_small(n)]
    usable = [c for c in candidates if not too_small(c)]
    what = _describe_layer(layer)
    if not usable:
        raise ConfigError(f"no attention backend serves the Gemma-4 {what}; declined: {', '.join(declined)}")
    how = f"attention.backend = {forced}" if forced else "first backend in the chain that serves it"
    reason = f"{what}: {how}"
    if declined:
        reason += f"; declined {', '.join(declined)}"
    return AttentionChoice(usable[0], reason, decided_by=FAMILY)


def _nvfp4(model: ModelInfo) -> bool:
    return model.prequantized_nvfp4 or any(f.startswith("nvfp4") for f in model.quant_formats)


def phase_decision(phase: str, model: ModelInfo, default: PhaseDecision) -> PhaseDecision | None:
    """Gemma-4's override of one pre-dequant phase, or None to keep the core's default."""
    if model.family != FAMILY or not _nvfp4(model):
        return None
    if phase == "3-MoE" and model.is_moe:
        return PhaseDecision("3-MoE", True, "kept on for NVFP4-prequantized Gemma-4: one contiguous expert buffer "
                             "per layer lets MoE decode route on the device with no host sync (capturable); "
                             "Gemma's attention-side restrictions must not switch it off", decided_by=FAMILY)
    if phase in ("3a", "3b") and default.enabled:
        roles = ", ".join(sorted(NON_ATTENTION_ROLES))
        return PhaseDecision(phase, True, f"{default.reason}; only for {roles}: Gemma-4 attention weights keep one "
                             f"numeric form for prefill and decode (no dual path; Gemma amplifies the drift)",
                             roles=NON_ATTENTION_ROLES, decided_by=FAMILY)
    return None
