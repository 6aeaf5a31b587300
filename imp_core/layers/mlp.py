"""Gated MLPs: down(act(gate(x)) * up(x))."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from imp_core.layers.linear import Linear


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_tanh": gelu_tanh,
    "gelu": F.gelu,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported activation {name!r} (known: {', '.join(ACTIVATIONS)})") from None


class GatedMLP:
    """SwiGLU / GeGLU feed-forward with separate gate and up projections."""

    def __init__(self, gate: Linear, up: Linear, down: Linear, act: str = "silu") -> None:
        self.gate, self.up, self.down = gate, up, down
        self.act = activation(act)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))
