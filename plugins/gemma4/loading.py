"""Gemma-4's router per-expert scale, in every layout it is stored in.

``router.per_expert_scale`` is a plain tensor in every layout but one: llama.cpp's NVFP4 conversion
folds it into each expert's down_proj global scale (``ffn_down_exps.scale``, read by the core as the
NVFP4 weight's sidecar), so the router then multiplies by one. (Experts themselves load through
``imp_core.model.loading.load_experts``.)
"""

from __future__ import annotations

from typing import Any

import torch

from imp_core.errors import CheckpointError
from imp_core.model.loading import checked, source_of


def per_expert_scale(w: Any, prefix: str, num_experts: int) -> torch.Tensor:
    """The router's per-expert output scale [E], or ones where a GGUF NVFP4 file folded it."""
    name = prefix + "router.per_expert_scale"
    if name in w:
        return checked(w, name, (num_experts,), keys="num_experts")
    plan = getattr(w, "quant_plan", None)
    down = plan.tensors.get(prefix + "experts.down_proj") if plan is not None else None
    if down is not None and down.format == "gguf:NVFP4" and "global" in down.scale_tensors:
        return torch.ones(num_experts, dtype=w.dtype, device=w.device)
    raise CheckpointError(f"{source_of(w)}: missing tensor '{name}' (and the experts' down_proj carries no "
                          f"per-expert scale it could be folded into)")
