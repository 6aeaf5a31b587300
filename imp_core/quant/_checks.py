"""Input checks shared by the dequantizers: each failure is a one-line QuantError."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from imp_core.errors import QuantError


def label(name: str | None, default: str) -> str:
    """The name used in messages: the checkpoint key when the caller gave one."""
    return f"'{name}'" if name else default


def require_tensor(t, what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise QuantError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    return t


def require_dtype(t: torch.Tensor, allowed: Iterable[torch.dtype], what: str) -> None:
    allowed = tuple(allowed)
    if t.dtype not in allowed:
        names = " or ".join(str(d).replace("torch.", "") for d in allowed)
        raise QuantError(f"{what} has dtype {str(t.dtype).replace('torch.', '')}, expected {names}")


def require_shape(t: torch.Tensor, expected: tuple[int, ...], what: str) -> None:
    if tuple(t.shape) != tuple(expected):
        raise QuantError(f"{what} has shape {list(t.shape)}, expected {list(expected)}")


def target_device(device, *tensors: torch.Tensor) -> torch.device:
    """The device to compute on: the one asked for, else the first tensor's."""
    if device is not None:
        return torch.device(device)
    return tensors[0].device
