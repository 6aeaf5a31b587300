"""Phase 3b: the prefill form of packed weights.

Prefill multiplies many tokens by every weight, so it wants tensor-core matmuls on dense
operands, while the decode fast path reads the packed bits. Two forms, chosen by the memory plan:

- ``dense copies``: every packed Linear / expert weight the phase covers (its roles, as the policy
  decided) gets a dense copy in the compute dtype beside its packed form, made once here; prefill
  then runs cuBLAS / grouped GEMMs on it with no per-call dequantisation;
- ``per-layer dequant``: nothing is added; each packed weight is dequantised when a prefill
  chunk reaches it and the dense transient is freed after use (the caching allocator reuses the
  same blocks, one layer's weight at a time).

Copies are made when their bytes fit in ``COPY_FRACTION`` of the device memory free after
loading, less what the run still has to allocate (cache, workspace, the fast path's re-laid-out
weights); the values are the same either way (the packed model's own dequantisation).
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm import tqdm

from imp_core.checkpoint.roles import tensor_role
from imp_core.layers.linear import Linear
from imp_core.layers.moe import Experts
from imp_core.model.walk import iter_instances
from imp_core.quant import QTensor
from imp_core.units import human_bytes

COPY_FRACTION = 0.75


def choose_prefill_form(dense_bytes: int, free: int | None) -> tuple[str, str]:
    """(form, reason): "dense copies" or "per-layer dequant"."""
    if dense_bytes == 0:
        return "none", "no packed weights in the phase's roles"
    if free is None:
        return "per-layer dequant", f"dense copies would take {human_bytes(dense_bytes)}; free memory unknown"
    if dense_bytes <= COPY_FRACTION * free:
        return "dense copies", (f"{human_bytes(dense_bytes)} of dense copies fit in {COPY_FRACTION:.0%} of the "
                                f"{human_bytes(free)} free after loading and the cache")
    return "per-layer dequant", (f"dense copies ({human_bytes(dense_bytes)}) exceed {COPY_FRACTION:.0%} of the "
                                 f"{human_bytes(free)} free after loading and the cache")


def _packed_slots(model: Any, roles: frozenset[str] | None) -> list[tuple[Any, str, QTensor]]:
    """(owner, attribute, packed weight) for every Linear / Experts weight the phase covers."""
    slots = []
    for obj in iter_instances(model, (Linear, Experts)):
        attrs = ("weight",) if isinstance(obj, Linear) else ("gate_up", "down")
        for attr in attrs:
            w = getattr(obj, attr)
            if isinstance(w, QTensor) and (roles is None or tensor_role(w.name) in roles):
                slots.append((obj, attr, w))
    return slots


def _dense_nbytes(w: QTensor, dtype: torch.dtype) -> int:
    n = 1
    for d in w.shape:
        n *= int(d)
    return n * torch.empty(0, dtype=dtype).element_size()


def build_prefill_forms(model: Any, *, roles: frozenset[str] | None, dtype: torch.dtype,
                        device: torch.device, reserve: int = 0) -> str:
    """Phase 3b's implementation: make the chosen form, return the plan line. ``reserve``: bytes
    still to be allocated after this phase (the KV/state cache and the workspace of the memory
    plan); the packed bytes are reserved too, as an upper bound of what the fast path's binding
    re-lays out beside them."""
    from imp_core.model.phases import available_memory

    slots = _packed_slots(model, roles)
    dense = sum(_dense_nbytes(w, dtype) for _, _, w in slots)
    packed = sum(w.nbytes for _, _, w in slots)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # blocks the allocator keeps from loading would read as used
    free = available_memory(device)
    form, reason = choose_prefill_form(dense, None if free is None else max(0, free - reserve - packed))
    if form == "dense copies":
        for owner, attr, w in tqdm(slots, desc="phase 3b: dense prefill copies", leave=False, unit="weight"):
            owner.prefill_dense[attr] = w.dequantize(dtype=dtype)
    return f"{form} for {len(slots)} packed weights - {reason}"
