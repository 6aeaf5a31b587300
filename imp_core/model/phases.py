"""The pre-dequant phase pipeline (docs/architecture.md, "Phases") and its memory rule.

Phase 0 runs here, weight by weight, as the family reads its weights: the packed tensor and
its sidecars become one ``QTensor`` (imp_core.quant.loading); then the memory rule decides
whether the reference path keeps it packed (dequantised per call, "on the fly") or makes it
dense now ("at load"). Phases 3a / 3b / 3-MoE build fast-path forms on the GPU; their
implementations register in ``PHASE_IMPLS`` (from the engine's fast-path code: imp_kernels never
imports imp_core); an enabled phase with no implementation is reported, never silently claimed.

The memory rule (``quant.dequant``):
- ``load``: every quantized weight is dequantised to the compute dtype as it is read;
- ``on_the_fly``: Linear/expert weights stay packed and are dequantised per call (one weight
  at a time, so at most one layer's dense weight exists beside the packed model);
- ``auto``: ``load`` when the dense copy of all quantized weights fits in
  ``AUTO_LOAD_FRACTION`` (50 %) of the memory available on the target device at load time,
  else ``on_the_fly``.
Whatever the rule, embeddings (a lookup table) and norms are made dense at load, and so is
every weight when Phase 0 is off or restricted to other roles. Loading reads one tensor at a
time, so peak memory stays about one tensor (its float32 dequant transient) above the final
weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from imp_core.plugin.plan_types import PhaseDecision
from imp_core.quant import QTensor
from imp_core.quant.plan import QuantPlan
from imp_core.checkpoint.roles import tensor_role
from imp_core.units import human_bytes

AUTO_LOAD_FRACTION = 0.5
ALWAYS_DENSE_ROLES = frozenset({"embedding", "norm", "conv"})
PHASE_IMPLS: dict[str, Callable[[Any, "PhasePipeline"], str]] = {}


def _phase_3b(model: Any, pipeline: "PhasePipeline") -> str:
    from imp_core.model.prefill_forms import build_prefill_forms

    decision = pipeline.decisions.get("3b")
    return build_prefill_forms(model, roles=getattr(decision, "roles", None), dtype=pipeline.dtype,
                               device=pipeline.device, reserve=pipeline.reserve)


PHASE_IMPLS["3b"] = _phase_3b




def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` now, within ``runtime.memory_limit`` (imp_core.device_memory)."""
    from imp_core.device_memory import free_bytes

    return free_bytes(device)


def release_host_memory() -> None:
    """Give freed dequant temporaries back to the OS (glibc keeps them in its heap otherwise,
    which made a CPU load's resident size ~0.4x the dense weights above what is live)."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


def dense_bytes(plan: QuantPlan, dtype: torch.dtype) -> int:
    """Bytes the quantized weights of ``plan`` take once dequantised to ``dtype``."""
    size = torch.empty(0, dtype=dtype).element_size()
    total = 0
    for t in plan.tensors.values():
        n = 1
        for d in t.logical_shape or ():
            n *= d
        total += n * size
    return total


def choose_dequant(setting: str, dense: int, available: int | None, keep_packed: bool = False
                   ) -> tuple[str, str]:
    """(mode "load" | "on_the_fly", reason): the memory rule as a pure function. ``keep_packed``:
    the decode fast path reads the packed weights, so ``auto`` keeps them."""
    if setting in ("load", "on_the_fly"):
        return setting, f"quant.dequant = {setting}"
    if keep_packed:
        return "on_the_fly", "the decode fast path reads the packed weights (prefill: the form phase 3b gives them)"
    if available is None:
        return "load", f"dense copy {human_bytes(dense)}; free memory unknown"
    if dense <= AUTO_LOAD_FRACTION * available:
        return "load", (f"dense copy {human_bytes(dense)} fits in {AUTO_LOAD_FRACTION:.0%} of "
                        f"{human_bytes(available)} available")
    return "on_the_fly", (f"dense copy {human_bytes(dense)} exceeds {AUTO_LOAD_FRACTION:.0%} of "
                          f"{human_bytes(available)} available")


@dataclass
class Phase0Stats:
    packed: dict[str, list[int]] = field(default_factory=dict)  # format -> [count, packed bytes]
    made_dense: dict[str, list[int]] = field(default_factory=dict)  # why -> [count, dense bytes]

    def add(self, table: dict[str, list[int]], key: str, nbytes: int) -> None:
        entry = table.setdefault(key, [0, 0])
        entry[0] += 1
        entry[1] += nbytes


class PhasePipeline:
    """The phases of one run: Phase 0 as weights are read, the others after the build."""

    def __init__(self, decisions: list[PhaseDecision], plan: QuantPlan, *, dequant: str = "auto",
                 dtype: torch.dtype = torch.float32, device: torch.device = torch.device("cpu"),
                 available: int | None = None, keep_packed: bool = False, reserve: int = 0) -> None:
        self.decisions = {d.phase: d for d in decisions}
        self.plan = plan
        self.dtype = dtype
        self.device = device
        self.dense_total = dense_bytes(plan, dtype)
        avail = available if available is not None else (available_memory(device) if plan.tensors else None)
        self.mode, self.mode_reason = choose_dequant(dequant, self.dense_total, avail, keep_packed)
        self.keep_packed = keep_packed
        self.reserve = reserve  # bytes the run allocates after the phases (cache, workspace)
        self.stats = Phase0Stats()
        self.later: list[tuple[str, str]] = []

    # -- phase 0 ------------------------------------------------------------------------
    def _dense_reason(self, name: str) -> str | None:
        d0 = self.decisions.get("0")
        role = tensor_role(name)
        if d0 is not None and not d0.enabled:
            return "phase 0 off"
        if d0 is not None and d0.roles is not None and role not in d0.roles:
            return f"role {role} outside phase 0's roles"
        if role in ALWAYS_DENSE_ROLES:
            return f"{role} (always dense)"
        if self.mode == "load":
            return "dequantised at load"
        return None

    def finish(self, name: str, qt: QTensor) -> Any:
        """Phase 0's result for one weight: the QTensor kept packed, or its dense form."""
        why = self._dense_reason(name)
        if why is None:
            self.stats.add(self.stats.packed, qt.qtype, qt.nbytes)
            return qt
        dense = qt.dequantize(dtype=self.dtype)
        self.stats.add(self.stats.made_dense, why, dense.numel() * dense.element_size())
        if dense.device.type == "cpu":
            release_host_memory()
        return dense

    # -- phases 3a / 3b / 3-MoE -----------------------------------------------------------
    def run_after_build(self, model: Any) -> None:
        """Run (or report) the enabled later phases once the model is built."""
        for phase in ("3a", "3b", "3-MoE"):
            d = self.decisions.get(phase)
            if d is None or not d.enabled:
                continue
            impl = PHASE_IMPLS.get(phase)
            if phase in ("3a", "3-MoE") and self.keep_packed:
                self.later.append((f"phase {phase} ran", "at fast-path binding (the 'fast' lines say what each "
                                                         "weight became)"))
            elif phase == "3b" and self.mode == "load":
                self.later.append(("phase 3b ran", "no - nothing is packed: the dequant rule made the weights dense "
                                                   "at load"))
            elif phase == "3b" and self.device.type != "cuda":
                self.later.append(("phase 3b ran", f"no - dense prefill copies are made on CUDA only; on "
                                                   f"{self.device.type} the reference path dequantises per call"))
            elif impl is None or self.device.type != "cuda":
                self.later.append((f"phase {phase} ran", "no - the reference path dequantises (no fast-path "
                                                         "implementation on this device)"))
            else:
                self.later.append((f"phase {phase} ran", impl(model, self)))

    # -- the log ----------------------------------------------------------------------------
    def report(self) -> list[tuple[str, str]]:
        """Plan lines saying what Phase 0 did (after loading)."""
        if not self.plan.tensors:
            return []
        lines = []
        packed = ", ".join(f"{n} {fmt} ({human_bytes(b)})" for fmt, (n, b) in sorted(self.stats.packed.items()))
        dense = ", ".join(f"{n} {why} ({human_bytes(b)})" for why, (n, b) in sorted(self.stats.made_dense.items()))
        lines.append(("phase 0 did", f"{self.plan.producer}: kept packed: {packed or 'none'}; "
                                     f"made dense: {dense or 'none'}"))
        lines.append(("dequant rule", f"{self.mode} - {self.mode_reason}"))
        return lines + self.later
