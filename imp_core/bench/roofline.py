"""The bytes one decode step must read, and the copy bandwidth to hold them against.

Per step: every weight byte of the layers that run (for MoE only the routed experts, k of E, plus
routers and shared experts), the KV cache up to the context (K and V of every attention layer,
a ring at most its window), and the recurrent state (read and written). The floor of a step is
those bytes over the copy bandwidth; a run reports tok/s, bytes x tok/s (achieved) and that over
the copy bandwidth measured on the same device in the same run.
"""

from __future__ import annotations

import time
from typing import Any

import torch


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Bytes per second of a device-to-device copy (read + written), best of a few."""
    if device.type == "cpu":
        nbytes = min(nbytes, 256 << 20)
    a = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device)
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        b.copy_(a)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cache_bytes(cache: Any, context: int) -> tuple[int, int]:
    """(KV bytes read at ``context``, recurrent-state bytes read and written) for one step."""
    kv, state = 0, 0
    for c in cache.layers:
        if hasattr(c, "slot_pos"):
            live = min(context, c.capacity)
            per_slot = (c.k[0, :, 0].numel() * c.k.element_size() + c.v[0, :, 0].numel() * c.v.element_size())
            kv += per_slot * live * c.k.shape[0]
        elif c is not None and hasattr(c, "nbytes"):
            state += 2 * c.nbytes
    return kv, state


def active_weight_bytes(tensors: dict[str, tuple[tuple[int, ...], int]], num_experts: int, experts_per_token: int
                        ) -> int:
    """Weight bytes a token reads: every tensor, the routed-expert stacks scaled by k / E, the
    embedding table once as the tied head or else one row. ``tensors``: name -> (shape, bytes)."""
    tied = not any(name.endswith("lm_head.weight") for name in tensors)
    total = 0
    for name, (shape, nbytes) in tensors.items():
        if name.endswith("embed_tokens.weight") and not tied:
            nbytes = nbytes // max(1, shape[0])  # one row; the untied head is counted on its own
        elif num_experts and ".experts." in f".{name}" and shape and shape[0] == num_experts:
            nbytes = nbytes * experts_per_token // num_experts
        elif num_experts and ".experts." in f".{name}":
            nbytes = nbytes * experts_per_token // num_experts  # per-expert tensors, summed over E
        total += nbytes
    return total
