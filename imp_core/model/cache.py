"""Preallocated per-layer caches.

Every buffer is allocated once, at the context size, before the first token; a decode step
only writes into them at positions held in device tensors, so the step does no allocation and
no host sync and can be captured in a CUDA graph (the slot index is computed on the device).

- ``KVCache``: K and V of one attention layer, [B, Hkv, S, D]. A full-attention layer has
  S = context and slot = position; a sliding-window layer keeps only its window as a ring,
  S = window, slot = position % window. ``slot_pos`` records which position each slot holds
  (-1 = empty), so masks are built from positions on the device.
- Recurrent state for linear-attention layers lives with the family (see imp_core.layers).

Prefill knows its positions on the host: ``LayerCaches.set_span(start, end)`` (the Generator
sets it around each prefill chunk, and clears it before decode, which must keep static shapes)
lets a multi-token ``update`` return only the slots that can be visible (``[0, end)`` of a full
cache; the chunk alone for a ring that is still empty), so prefill attention does not scan the
whole context's empty slots and a fresh prompt's chunk is exactly the causal triangle.
"""

from __future__ import annotations

import torch


class KVCache:
    """K/V buffers of one attention layer (full, or a sliding-window ring)."""

    def __init__(self, *, batch: int, num_kv_heads: int, head_dim: int, capacity: int,
                 dtype: torch.dtype, device: torch.device, window: int | None = None,
                 v_head_dim: int | None = None) -> None:
        self.window = window
        self.ring = window is not None and capacity <= window
        self.capacity = capacity
        self.k = torch.zeros(batch, num_kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros(batch, num_kv_heads, capacity, v_head_dim or head_dim, dtype=dtype,
                             device=device)
        self.slot_pos = torch.full((capacity,), -1, dtype=torch.long, device=device)
        self.span: tuple[int, int] | None = None  # host-known positions of the current prefill chunk

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()

    def reset(self) -> None:
        self.slot_pos.fill_(-1)

    def _write(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> None:
        slots = positions % self.capacity if self.ring else positions
        self.k.index_copy_(2, slots, k)
        self.v.index_copy_(2, slots, v)
        self.slot_pos.index_copy_(0, slots, positions)

    def update(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Store the new K/V [B, Hkv, T, D] at ``positions`` [T]; return what to attend over.

        Returns (keys, values, key_positions). For a ring that receives several tokens at once
        the old ring is concatenated with the new tokens *before* they overwrite it, since
        early queries of the chunk still need keys the chunk's own tail evicts.
        """
        t = k.shape[2]
        if self.span is not None and t > 1:
            start, end = self.span
            if not self.ring:
                self._write(k, v, positions)
                return self.k[:, :, :end], self.v[:, :, :end], self.slot_pos[:end]
            if start == 0:  # nothing older in the ring: the chunk attends to itself only
                n = min(t, self.capacity)
                self._write(k[:, :, t - n:], v[:, :, t - n:], positions[t - n:])
                return k, v, positions
        if self.ring and t > 1:
            keys = torch.cat((self.k, k), dim=2)
            values = torch.cat((self.v, v), dim=2)
            key_pos = torch.cat((self.slot_pos, positions))
            n = min(t, self.capacity)
            self._write(k[:, :, t - n:], v[:, :, t - n:], positions[t - n:])
            return keys, values, key_pos
        self._write(k, v, positions)
        return self.k, self.v, self.slot_pos


class LayerCaches:
    """A model's caches, one per layer (a KVCache, a recurrent state, or None), reset together."""

    def __init__(self, layers: list) -> None:
        self.layers = layers

    def reset(self) -> None:
        for c in self.layers:
            if c is not None:
                c.reset()

    def set_span(self, span: tuple[int, int] | None) -> None:
        """Positions [start, end) of the prefill chunk about to run (None: unknown, e.g. decode)."""
        for c in self.layers:
            if isinstance(c, KVCache):
                c.span = span

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.layers if c is not None)
