"""Put the numba CUDA simulator on for kernel tests (import this BEFORE imp_kernels).

numba reads ``NUMBA_ENABLE_CUDASIM`` once, when ``numba.cuda`` is first imported. Importing this
module sets the variable if numba.cuda is not loaded yet; ``SIM_OK`` then says whether this
process really runs kernels in the simulator. Test modules do::

    from kernels_sim import SIM_OK, sim_skip   # first import of the module
    pytestmark = sim_skip

so that a process where numba.cuda was already imported for real (e.g. on the GPU machine)
skips them cleanly instead of launching on a GPU or failing.
"""

from __future__ import annotations

import os
import sys

import pytest

if "numba.cuda" not in sys.modules:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

from imp_kernels.compat import SIMULATOR  # noqa: E402

SIM_OK: bool = SIMULATOR
sim_skip = pytest.mark.skipif(not SIM_OK, reason="numba.cuda was imported without the CUDA simulator")


def rel_err(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere in ``out`` gives inf."""
    import torch

    o = out.double()
    r = ref.double()
    if not torch.isfinite(o).all():
        return float("inf")
    return float((o - r).norm() / r.norm().clamp_min(1e-30))
