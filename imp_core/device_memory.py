"""How much memory a device has left for imp: the free memory, capped by ``runtime.memory_limit``.

The limit is applied once per run (``apply_limit``): torch's caching allocator then refuses to
grow past it (``set_per_process_memory_fraction``), and ``free_bytes`` - what the memory plan and
phase 3b size themselves by - never reports more than the limit minus what this process holds.
"""

from __future__ import annotations

from pathlib import Path

import torch

from imp_core.errors import ConfigError
from imp_core.units import human_bytes

_LIMITS: dict[int, int] = {}  # CUDA device index -> bytes


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def apply_limit(device: torch.device, limit: int | None) -> None:
    """Cap this process's allocations on a CUDA ``device`` at ``limit`` bytes (None: no cap)."""
    if device.type != "cuda":
        return
    idx = _index(device)
    total = torch.cuda.get_device_properties(idx).total_memory
    if limit is None:
        _LIMITS.pop(idx, None)
        torch.cuda.set_per_process_memory_fraction(1.0, idx)
        return
    if limit > total:
        raise ConfigError(f"runtime.memory_limit is {human_bytes(limit)} but {torch.cuda.get_device_name(idx)} "
                          f"has {human_bytes(total)}")
    torch.cuda.set_per_process_memory_fraction(limit / total, idx)
    _LIMITS[idx] = limit


def free_bytes(device: torch.device) -> int | None:
    """Bytes still available to imp on ``device`` (CUDA: free memory within the limit; CPU:
    MemAvailable), None if unknown."""
    if device.type == "cuda":
        try:
            idx = _index(device)
            free = int(torch.cuda.mem_get_info(idx)[0])
        except (RuntimeError, AssertionError):
            return None
        limit = _LIMITS.get(idx)
        if limit is not None:
            free = max(0, min(free, limit - torch.cuda.memory_reserved(idx)))
        return free
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
