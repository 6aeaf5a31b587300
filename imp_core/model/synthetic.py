"""Random weights at a model's real shapes, made directly on the target device.

Benchmarks and smoke runs of full-size models cannot download checkpoints; they build the
family's model from a ``SyntheticWeights`` store instead of a ``WeightStore``. A family lists
its tensors with ``Family.synthetic_spec(config)``: name -> (shape, init), where init is
``"normal"`` (std 0.02), ``"ones"``, ``"zeros"``, ``"uniform:a,b"`` or ``"const:c"``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from tqdm import tqdm

from imp_core.errors import CheckpointError

Spec = dict[str, tuple[tuple[int, ...], str]]


class SyntheticWeights:
    """The WeightStore interface over random tensors generated on first access."""

    checkpoint = None
    quant_plan = None

    def __init__(self, spec: Spec, *, device: torch.device, dtype: torch.dtype, seed: int = 0,
                 progress: bool = True, formats: Callable[[str, tuple[int, ...]], str | None] | None = None
                 ) -> None:
        """``formats(name, shape)`` names the packed qtype of a tensor (None: dense), e.g. a
        family's published format mix; packed tensors come out as ``QTensor`` like a checkpoint's."""
        self.spec = spec
        self.formats = formats
        self.device = torch.device(device)
        self.dtype = dtype
        self._gen = torch.Generator(device=self.device).manual_seed(seed)
        self._used: set[str] = set()
        self._bar = tqdm(total=len(spec), desc="random weights", unit="tensor",
                         disable=None if progress else True, leave=False)

    def __contains__(self, name: str) -> bool:
        return name in self.spec

    def names(self) -> list[str]:
        return list(self.spec)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name)[0]

    def _entry(self, name: str) -> tuple[tuple[int, ...], str]:
        try:
            return self.spec[name]
        except KeyError:
            raise CheckpointError(f"synthetic weights: no tensor named '{name}'") from None

    def get(self, name: str, *, dtype: Any = None, device: torch.device | None = None) -> torch.Tensor:
        shape, init = self._entry(name)
        dt = self.dtype if dtype in (None, "keep") else dtype
        dev = device or self.device
        qtype = self.formats(name, shape) if self.formats is not None and dtype in (None, "keep") else None
        if qtype is not None:
            from imp_core.model.synthetic_quant import random_qtensor

            self._mark(name)
            return random_qtensor(qtype, shape, device=dev, gen=self._gen, name=name)
        t = torch.empty(shape, dtype=dt, device=dev)
        kind, _, arg = init.partition(":")
        if kind == "normal":
            t.normal_(0.0, float(arg or 0.02), generator=self._gen)
        elif kind == "ones":
            t.fill_(1.0)
        elif kind == "zeros":
            t.zero_()
        elif kind == "const":
            t.fill_(float(arg))
        elif kind == "uniform":
            lo, hi = (float(x) for x in arg.split(","))
            t.uniform_(lo, hi, generator=self._gen)
        else:
            raise ValueError(f"unknown synthetic init {init!r} for '{name}'")
        self._mark(name)
        return t

    def _mark(self, name: str) -> None:
        if name not in self._used:
            self._used.add(name)
            self._bar.update(1)

    def get_optional(self, name: str, **kw: Any) -> Any:
        return self.get(name, **kw) if name in self.spec else None

    def unused(self) -> list[str]:
        return [n for n in self.spec if n not in self._used]

    def finish(self, *, strict: bool = True) -> None:
        self._bar.close()
        left = self.unused()
        if left and strict:
            raise CheckpointError(f"synthetic weights: {len(left)} tensor(s) unused (e.g. '{left[0]}')")

    @property
    def nbytes(self) -> int:
        size = torch.empty(0, dtype=self.dtype).element_size()
        total = 0
        for shape, _ in self.spec.values():
            n = 1
            for d in shape:
                n *= d
            total += n * size
        return total
