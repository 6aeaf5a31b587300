"""The core's reasons the decode fast path cannot run: device, kernels, dtype, the family.

Pure except ``kernels_importable``, which the session calls once and passes in, so the rule
itself (``core_reasons``) is pinned by unit tests.
"""

from __future__ import annotations

import os

import torch

FAST_DTYPE = torch.bfloat16


def simulator_on() -> bool:
    """True when numba's CUDA simulator is requested (kernels then run on CPU tensors)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "") == "1"


def kernels_importable() -> str | None:
    """None if imp_kernels and numba-cuda import here, else why not (one line)."""
    try:
        import imp_kernels.compat  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means no kernels
        return f"imp_kernels / numba-cuda cannot be imported ({type(exc).__name__}: {exc})"
    return None


def core_reasons(*, setting: str, device: torch.device, dtype: torch.dtype | None, family_has_fast: bool,
                 kernels_error: str | None, simulator: bool = False) -> list[str]:
    """Every reason the core has; [] means the core does not object."""
    reasons = []
    if setting == "off":
        reasons.append("runtime.fast_path is off")
    # numba's CUDA simulator runs the kernels on CPU tensors: only when asked for (fast_path = on),
    # since it is for tests, and slow
    if device.type != "cuda" and not (simulator and device.type == "cpu" and setting == "on"):
        reasons.append(f"device is {device.type}, not cuda")
    if kernels_error:
        reasons.append(kernels_error)
    if dtype is not None and dtype != FAST_DTYPE:
        reasons.append(f"the kernels compute in bfloat16, the run's dtype is {str(dtype).replace('torch.', '')} "
                       f"(--dtype bfloat16)")
    if not family_has_fast:
        reasons.append("the family has no fast decode step")
    return reasons
