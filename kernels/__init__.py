"""imp_kernels: Numba-CUDA kernels for the decode hot path (import imp_kernels.compat first).

A leaf library: it depends on torch, numba, numba-cuda and numpy only, never on the engine or a
family plugin (tests/test_layering.py checks this). The wrappers raise
``imp_kernels.errors.KernelError``.
"""
