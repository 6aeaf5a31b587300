"""Random weights at a model's real shapes, made directly on the target device.

Benchmarks and smoke runs of full-size models cannot download checkpoints; they build the
family's model from a ``SyntheticWeights`` store instead of a ``WeightStore``. A family lists
its tensors with ``Family.synthetic_spec(config)``: name -> (shape, init), where init is
``"normal"`` (std 0.02), ``"ones"``, ``"zeros"``, ``"uniform:a,b"`` or ``"const:c"``.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm import tqdm

from imp_core.errors import CheckpointError

Spec = dict[str, tuple[tuple[int, ...], str]]


class SyntheticWeights:
    """The WeightStore interface over random tensors generated on first access."""

    checkpoint = None
    quant_plan = None

    def __init__(self, spec: Spec, *, device: torch.device, dtype: torch.dtype, seed: int = 0,
                 progress: bool = True) -> None:
        self.spec = spec
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
        if name not in self._used:
            self._used.add(name)
            self._bar.update(1)
        return t

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
