"""Benchmark and check harness for imp_kernels (GPU machine; ``--tiny`` runs under the simulator).

* ``python -m imp_kernels.bench.gemv``: the GEMV kernels at real model shapes (``gemv_cases``).
* ``python -m imp_kernels.bench.ops``: the decode-op kernels at real model shapes (``ops_cases``).
* ``python -m imp_kernels.bench.ptx_report``: ptxas' resource report of the decode-op kernels.
* ``util``: CUDA-graph timing, copy bandwidth, result tables.
"""
