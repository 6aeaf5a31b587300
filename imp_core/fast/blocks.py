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
    """Projections of one input joined into one launch where the format allows (else into as few
    launches as the formats allow). ``self(x, out)`` writes the concatenated rows into ``out``
    [M, sum(N)], in the projections' order."""

    def __init__(self, linears: list[Any], *, name: str = "") -> None:
        weights = [lin.weight for lin in linears]
        fused = fuse_rows(weights)
        if fused is not None:
            self.parts = [bind_linear(fused, name=name)]
            self.sizes = [int(fused.shape[0])]  # rows each launch writes, in order
            self.reason = f"{len(linears)} projections in one launch; {self.parts[0].reason}"
            if isinstance(fused, torch.Tensor):
                bound = self.parts[0].tensors["weight"]
                start = 0
                for lin, n in zip(linears, [int(w.shape[0]) for w in weights]):  # the reference reads these rows
                    lin.weight = bound[start:start + n]
                    start += n
        else:  # join what can be joined: consecutive runs whose formats and scales agree
            groups: list[list] = []
            for w in weights:
                if groups and fuse_rows(groups[-1] + [w]) is not None:
                    groups[-1].append(w)
                else:
                    groups.append([w])
            self.parts = [bind_linear(g[0] if len(g) == 1 else fuse_rows(g), name=name) for g in groups]
            self.sizes = [sum(int(w.shape[0]) for w in g) for g in groups]
            self.reason = f"{len(linears)} projections in {len(groups)} launches (formats or scales differ); " + \
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
