"""The one place that makes numba-cuda importable and usable here.

Every kernel module does ``from imp_kernels.compat import cuda, SIMULATOR`` and never imports
``numba.cuda`` itself, so the fixes below run exactly once, before numba.cuda loads.

* numpy >= 2.5 removed ``np.row_stack``; numba-cuda 0.30.4's ``numba.cuda.np.arrayobj`` still
  registers an overload for it at import time and fails with ``AttributeError`` (seen on the
  GPU machine: numpy 2.5.2). ``np.vstack`` is what ``row_stack`` always was, so alias it back.
* ``SIMULATOR`` is True when ``NUMBA_ENABLE_CUDASIM=1`` was set before numba was first imported
  (numba reads it once). Under the simulator kernels run as Python threads on CPU tensors;
  libdevice and inline PTX do not exist there, so modules pick a pure-Python device function at
  definition time when ``SIMULATOR`` is set (see ``imp_kernels.ptx``).

``cuda`` is the real ``numba.cuda`` module object (the simulator swaps that exact object inside
kernel globals, so it must not be wrapped).
"""

from __future__ import annotations

import numpy as np

if not hasattr(np, "row_stack"):  # numpy >= 2.5
    np.row_stack = np.vstack  # type: ignore[attr-defined]

from numba import cuda  # noqa: E402  (must follow the numpy fix)
from numba.cuda.core import config as _numba_config  # noqa: E402

SIMULATOR: bool = bool(_numba_config.ENABLE_CUDASIM)

__all__ = ["cuda", "SIMULATOR", "gpu_available"]


def gpu_available() -> bool:
    """True when real CUDA kernels can run (not the simulator, and a device is present)."""
    if SIMULATOR:
        return False
    try:
        return bool(cuda.is_available())
    except Exception:  # driver missing or broken: no GPU for our purposes
        return False
