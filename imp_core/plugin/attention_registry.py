"""The ONE attention-backend registry: what each backend serves and how it runs.

A backend is one ``AttentionBackend`` object: its capabilities (devices, dtypes, head dims,
sliding windows, output gate) and its ``run`` function. The core's own backends and every
plugin's are added through the same hook, ``imp_register_attention_backends(register)``; the
policy chooses per layer from this registry (best first, each backend may decline with a
reason) and the model runs exactly the object that was chosen, so a registered backend can
never be chosen and then be missing at run time.

``run(q, k, v, q_pos, key_pos, *, scale, window)``: q [B, H, T, D], k/v [B, Hkv, S, D(v)] as the
cache holds them (grouped-query heads not yet repeated), q_pos [T] and key_pos [S] positions on
the device (key_pos -1 = empty slot); returns [B, H, T, Dv]. A backend must not sync with the
host or allocate in a way that breaks CUDA-graph capture if it serves decode on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from imp_core.errors import PluginError
from imp_core.plugin.plan_types import AttentionLayerSpec

AttentionFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class AttentionBackend:
    """One attention implementation and what it can serve."""

    name: str
    run: AttentionFn
    devices: frozenset[str]  # torch device types it runs on
    max_head_dim: int | None = None  # None: any
    head_dim_multiple: int = 1  # head dims it takes are multiples of this
    sliding_window: bool = True
    output_gate: bool = True  # the gate is applied by the family around the backend
    dtypes: frozenset[torch.dtype] | None = None  # None: any compute dtype
    #: served only when the decode fast path is on (the reference path stays the oracle)
    fast_path_only: bool = False
    description: str = ""

    def declines(self, layer: AttentionLayerSpec, device_type: str,
                 dtype: torch.dtype | None = None, fast_path: bool = True) -> str | None:
        """None if this backend can serve ``layer`` on ``device_type``, else the reason it can't."""
        if self.fast_path_only and not fast_path:
            return f"{self.name} serves the decode fast path only (off)"
        if device_type not in self.devices:
            return f"{self.name} does not run on {device_type}"
        if self.dtypes is not None and dtype is not None and dtype not in self.dtypes:
            return f"{self.name} does not run in {str(dtype).replace('torch.', '')}"
        if self.max_head_dim is not None and max(layer.head_dim, layer.v_head_dim or 0) > self.max_head_dim:
            return f"{self.name} supports head_dim <= {self.max_head_dim}, layer has {layer.head_dim}"
        if max(layer.head_dim, layer.v_head_dim or layer.head_dim) % self.head_dim_multiple:
            return f"{self.name} takes head dims that are multiples of {self.head_dim_multiple}, layer has {layer.head_dim}"
        if layer.sliding_window and not self.sliding_window:
            return f"{self.name} has no sliding-window support"
        if layer.output_gate and not self.output_gate:
            return f"{self.name} cannot apply an output gate"
        return None


class AttentionRegistry:
    """Backends in chain order, best first."""

    def __init__(self) -> None:
        self._backends: dict[str, AttentionBackend] = {}

    def register(self, backend: AttentionBackend, *, first: bool = True) -> AttentionBackend:
        """Add ``backend`` at the head of the chain (``first``) or at its end; a name registered
        twice is an error (two plugins must not silently replace each other's kernels)."""
        if not isinstance(backend, AttentionBackend):
            raise PluginError(f"register() takes an AttentionBackend, got {backend!r}")
        if backend.name in self._backends:
            raise PluginError(f"attention backend '{backend.name}' is registered twice")
        items = list(self._backends.items())
        entry = (backend.name, backend)
        self._backends = dict([entry, *items] if first else [*items, entry])
        return backend

    def __getitem__(self, name: str) -> AttentionBackend:
        return self._backends[name]

    def __contains__(self, name: object) -> bool:
        return name in self._backends

    def __iter__(self) -> Iterator[str]:
        return iter(self._backends)

    def __len__(self) -> int:
        return len(self._backends)

    def get(self, name: str) -> AttentionBackend | None:
        return self._backends.get(name)

    def items(self):
        return self._backends.items()
