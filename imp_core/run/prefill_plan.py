"""The plan line that says how prefill will run: chunking, attention, MoE and the family's own
choices, from the same rules the layers apply at run time (so the line cannot drift from them)."""

from __future__ import annotations

from typing import Any

from imp_core.layers.moe import Experts, grouped_mm_available, moe_strategy
from imp_core.model.walk import iter_instances


def prefill_summary(model: Any, chunk: int) -> str:
    device, dtype = model.device, model.dtype
    parts = [f"chunks of up to {chunk} tokens",
             "attention: torch SDPA, unmasked causal kernel for a prompt's first chunk, position mask otherwise"]
    if next(iter_instances(model, (Experts,)), None) is not None:
        grouped = device.type == "cuda" and grouped_mm_available(device, dtype)
        parts.append("MoE: " + moe_strategy(chunk, device.type, grouped)[1])
    parts.extend(model.prefill_notes())
    return "; ".join(parts)
