"""imp_kernels: Numba-CUDA kernels for the decode hot path (import imp_kernels.compat first)."""
