"""The weight store: a family reads its weights by normalised name, one tensor at a time.

Nothing is read until a family asks for it, and every tensor goes straight from the memory
map to its target device and dtype, so peak host memory stays near one tensor above the
final weights. A progress bar (or, off a terminal, a few log lines) counts the bytes read.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from loguru import logger

from imp_core.checkpoint.base import Checkpoint
from imp_core.checkpoint.names import normalize_name
from imp_core.errors import CheckpointError
from imp_core.model.load_progress import LoadProgress
from imp_core.quant.plan import QuantPlan

KEEP = "keep"  # dtype sentinel: keep the stored dtype


class WeightStore:
    """Normalised tensor names of a checkpoint, loaded on demand onto ``device`` as ``dtype``."""

    config: Any = None  # the family config, set by the loader so shape errors can name its keys

    def __init__(self, checkpoint: Checkpoint, *, device: torch.device, dtype: torch.dtype,
                 quant_plan: QuantPlan | None = None, extra_skip: tuple[str, ...] = (),
                 rename: Callable[[str], str | None] | None = None, progress: bool = True,
                 transform: Callable[[str, Any], Any] | None = None, phases: Any = None) -> None:
        """``transform(name, tensor)`` undoes a converter's layout (GGUF) on each stored tensor;
        ``phases`` (an ``imp_core.model.phases.PhasePipeline``) finishes each quantized weight."""
        self.checkpoint = checkpoint
        self.device = device
        self.dtype = dtype
        plan = quant_plan or QuantPlan()
        self.transform = transform
        self.phases = phases
        self._stored: dict[str, str] = {}
        self.skipped: list[str] = []
        logical: dict[str, str] = {}
        for stored in checkpoint.tensors:
            if stored in plan.sidecars:
                continue
            name = normalize_name(plan.logical_name(stored), extra_skip)
            if name is not None and rename is not None:
                name = rename(name)
            if name is None:
                self.skipped.append(stored)
                continue
            if name in self._stored:
                raise CheckpointError(f"{checkpoint.path}: tensors '{self._stored[name]}' and '{stored}' "
                                      f"both map to '{name}'")
            self._stored[name] = stored
            logical[name] = plan.logical_name(stored)
        self.quant_plan = plan.rekeyed(logical)  # keyed by the model's names
        self._used: set[str] = set()
        total = sum(checkpoint.tensors[s].nbytes for s in self._stored.values())
        self._bar = LoadProgress(total, enabled=progress)
        if self.skipped:
            logger.info("skipping {} tensors that are not part of the text model (e.g. {})",
                        len(self.skipped), self.skipped[0])

    # -- queries ------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self._stored

    def names(self) -> list[str]:
        return list(self._stored)

    def stored_name(self, name: str) -> str:
        try:
            return self._stored[name]
        except KeyError:
            raise CheckpointError(f"{self.checkpoint.path}: missing tensor '{name}'") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self.checkpoint.tensors[self.stored_name(name)].shape

    # -- loading ------------------------------------------------------------------------
    def raw(self, name: str) -> torch.Tensor:
        """The stored tensor on the CPU, exactly as stored (no dtype change), marked as used."""
        stored = self.stored_name(name)
        info = self.checkpoint.tensors[stored]
        t = self.checkpoint.read(stored)
        if name not in self._used:
            self._used.add(name)
            self._bar.update(info.nbytes)
        return t

    def get(self, name: str, *, dtype: torch.dtype | str | None = None,
            device: torch.device | None = None) -> Any:
        """The tensor ``name`` on the target device; floating tensors cast to ``dtype``.

        ``dtype=None`` means the model's activation dtype; ``dtype="keep"`` keeps the stored
        dtype. Quantized weights come back as ``QTensor`` (see ``imp_core.quant``).
        """
        fmt = self.quant_plan.format_of(name)
        if fmt != "dense":
            from imp_core.quant.loading import load_qtensor

            qt = load_qtensor(self, name, self.quant_plan.tensors[name], device or self.device)
            if self.transform is not None:
                qt = self.transform(name, qt)
            if self.phases is not None and not isinstance(qt, torch.Tensor):
                return self.phases.finish(name, qt)
            if isinstance(qt, torch.Tensor):
                return qt.to(dtype=self.dtype if dtype in (None, KEEP) else dtype)
            return qt
        t = self.raw(name)
        if self.transform is not None:
            t = self.transform(name, t)
        target = self.dtype if dtype is None else dtype
        dev = device or self.device
        if target == KEEP or not t.is_floating_point():
            return t.to(dev)
        return t.to(device=dev, dtype=target)

    def format_of(self, name: str) -> str:
        """"dense", or the quantized format of the weight ``name`` ("nvfp4", "gguf:Q4_K", ...)."""
        return self.quant_plan.format_of(name)

    def get_optional(self, name: str, **kw: Any) -> Any:
        return self.get(name, **kw) if name in self._stored else None

    def unused(self) -> list[str]:
        return [n for n in self._stored if n not in self._used]

    def finish(self, *, strict: bool = True) -> None:
        """Close the progress bar; unread tensors are an error (strict) or a warning."""
        self._bar.close()
        left = self.unused()
        if not left:
            return
        msg = (f"{self.checkpoint.path}: {len(left)} tensor(s) were not used by the model "
               f"(e.g. '{self.stored_name(left[0])}')")
        if strict:
            raise CheckpointError(msg)
        logger.warning(msg)
