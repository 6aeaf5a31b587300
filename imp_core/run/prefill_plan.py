"""The plan line that says how prefill will run: chunking, attention, MoE and the family's own
choices, from the same rules the layers apply at run time (so the line cannot drift from them)."""

from __future__ import annotations

from typing import Any

from imp_core.layers.moe import Experts, grouped_mm_available, moe_strategy
from imp_core.model.walk import iter_instances


SDPA_PREFILL = ("sdpa", "numba-decode")  # the core's backends whose multi-token calls run sdpa_attention


def _attention(model: Any) -> str:
    """What multi-token attention calls run, from the backends the plan installed."""
    names = sorted({b.name for b in getattr(model, "attention_backends", {}).values()}) or ["sdpa"]
    how = []
    for name in names:
        if name == "eager":
            how.append("eager (explicit scores, always masked)")
        elif name in SDPA_PREFILL:
            how.append(f"{name} (torch SDPA for prefill: unmasked causal kernel when a chunk starts the sequence "
                       f"and fits every window it meets, position mask otherwise)")
        else:
            how.append(f"{name} (a plugin's backend, prefill as it implements it)")
    return "; ".join(how)


def prefill_summary(model: Any, chunk: int) -> str:
    device, dtype = model.device, model.dtype
    parts = [f"chunks of up to {chunk} tokens", "attention: " + _attention(model)]
    if next(iter_instances(model, (Experts,)), None) is not None:
        grouped = device.type == "cuda" and grouped_mm_available(device, dtype)
        parts.append("MoE: " + moe_strategy(chunk, device.type, grouped)[1])
    parts.extend(model.prefill_notes())
    return "; ".join(parts)
