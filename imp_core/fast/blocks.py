"""Building blocks every family's decode step shares: a gated MLP and fused projections.

Binding a group of projections (q|k|v, gate|up) into one launch keeps the reference model's
numbers: for dense bf16 weights the reference ``Linear`` objects are re-pointed at row views of
the joined weight, so the model holds one copy; other formats are joined only when no scale
changes (``fast.linear.fuse_rows``).
"""

from __future__ import annotations

from typing import Any

import torch

from imp_core.fast import ops
from imp_core.fast.linear import FastLinear, bind_linear, fuse_rows


class FusedProjection:
    """Projections of one input joined into one launch where the format allows, else one each.
    ``self(x, out)`` writes the concatenated rows into ``out`` [M, sum(N)]; ``views(out)``
    splits it."""

    def __init__(self, linears: list[Any], *, name: str = "") -> None:
        weights = [lin.weight for lin in linears]
        self.sizes = [int(w.shape[0]) for w in weights]
        fused = fuse_rows(weights)
        if fused is not None:
            self.parts = [bind_linear(fused, name=name)]
            self.reason = f"{len(linears)} projections in one launch; {self.parts[0].reason}"
            if isinstance(fused, torch.Tensor):
                bound = self.parts[0].tensors["weight"]
                start = 0
                for lin, n in zip(linears, self.sizes):  # the reference path reads the same rows
                    lin.weight = bound[start:start + n]
                    start += n
        else:
            self.parts = [bind_linear(w, name=name) for w in weights]
            self.reason = f"{len(linears)} launches (formats or scales differ); " + \
                "; ".join(sorted({p.reason for p in self.parts}))

    @property
    def out_features(self) -> int:
        return sum(self.sizes)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if len(self.parts) == 1:
            return self.parts[0](x, out)
        start = 0
        for part, n in zip(self.parts, self.sizes):  # batch-1 decode: each column block is contiguous
            part(x, out[:, start:start + n])
            start += n
        return out

    def views(self, out: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(out, self.sizes, dim=-1))


class FastGatedMLP:
    """``out = down(act(gate(x)) * up(x)) (+ residual)`` with gate|up in one launch."""

    def __init__(self, gate: Any, up: Any, down: Any, act: str) -> None:
        self.gate_up = FusedProjection([gate, up], name="gate_up")
        self.down: FastLinear = bind_linear(down.weight, name="down")
        self.act = act
        self.inter = int(down.weight.shape[1])

    @property
    def nbytes(self) -> int:
        return self.gate_up.nbytes + self.down.nbytes

    def buffers(self, m: int, device: torch.device) -> dict[str, torch.Tensor]:
        return {"gu": torch.empty(m, 2 * self.inter, dtype=torch.bfloat16, device=device),
                "act": torch.empty(m, self.inter, dtype=torch.bfloat16, device=device)}

    def __call__(self, x: torch.Tensor, buf: dict[str, torch.Tensor], out: torch.Tensor,
                 residual: torch.Tensor | None = None) -> torch.Tensor:
        self.gate_up(x, buf["gu"])
        ops.gated_act(buf["gu"], buf["act"], self.act)
        return self.down(buf["act"], out, residual=residual)
