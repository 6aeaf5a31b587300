"""The device running out of memory despite the plan is reported like a plan that does not fit."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from imp_core.errors import OutOfMemoryError
from imp_core.units import human_bytes

CPU_ALLOC_FAILED = "can't allocate memory"


@contextmanager
def device_memory_errors(plan, context_source: str) -> Iterator[None]:
    """Turn torch's out-of-memory errors into one ``OutOfMemoryError`` line with the plan."""
    try:
        yield
    except RuntimeError as exc:  # torch.OutOfMemoryError is one; the CPU allocator raises a plain one
        if not isinstance(exc, torch.OutOfMemoryError) and CPU_ALLOC_FAILED not in str(exc):
            raise
        _raise_for(plan, context_source)
    except MemoryError:
        _raise_for(plan, context_source)


def _raise_for(plan, context_source: str) -> None:
    if plan.device.type == "cuda":
        torch.cuda.empty_cache()
    free = "unknown" if plan.free is None else human_bytes(plan.free)
    raise OutOfMemoryError(f"out of memory on {plan.device} (planned {human_bytes(plan.total)} with the KV/state "
                           f"cache for context {context_source}; {free} was free before loading); lower "
                           f"runtime.context (--context) or free memory on the device") from None
