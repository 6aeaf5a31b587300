"""The exception imp_kernels raises.

imp_kernels is a leaf library (torch, numba, numba-cuda, numpy): it defines its own error type
and leaves any translation into an application's errors to the caller.
"""

from __future__ import annotations

__all__ = ["KernelError"]


class KernelError(ValueError):
    """A kernel wrapper got arguments it cannot run: a wrong dtype, shape, device or layout,
    storage that does not start on the alignment the kernel's vector loads need, or a shape or
    setting the kernel does not support."""
