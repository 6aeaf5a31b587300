"""Compile the decode-op kernels to sm_90 PTX and print ptxas' resource report (no GPU needed).

    python -m imp_kernels.bench.ptx_report [--keep DIR] [names...]

Needs NVVM/NVRTC (a CUDA toolkit) and ``ptxas`` on PATH; it never launches anything. Each kernel
is compiled for the argument types its wrapper passes (``kernel_sigs`` below), so the report
(registers, spills, stack frame, shared memory) is the one the real launch gets. On the GPU
machine ``imp_kernels.bench.ops`` prints the same figures from the loaded kernels instead.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from types import SimpleNamespace

from imp_kernels.compat import SIMULATOR, cuda


def arg_types() -> SimpleNamespace:
    """The numba types the wrappers pass: 1-D C arrays of words / bf16 bits / ints / floats."""
    from numba import types

    arr = lambda dt: types.Array(dt, 1, "C")  # noqa: E731
    return SimpleNamespace(U32=arr(types.uint32), U16=arr(types.uint16), I64=arr(types.int64),
                           I32=arr(types.int32), F32A=arr(types.float32), I=types.int64, F=types.float32)


def kernel_sigs() -> dict:
    """name -> (dispatcher, argument types) for every decode-op kernel."""
    from imp_kernels import attn_decode, gdn_decode, rmsnorm, rope, router, sample

    t = arg_types()
    sigs: dict = {}
    for mod in (rmsnorm, rope, attn_decode, gdn_decode, router, sample):
        sigs.update(mod.kernel_sigs(t))
    return sigs


def report(names: list[str], keep: Path | None) -> int:
    if SIMULATOR:
        print("ptx_report: NUMBA_ENABLE_CUDASIM is set; unset it", file=sys.stderr)
        return 2
    out_dir = keep or Path(tempfile.mkdtemp(prefix="imp_ptx_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    rc = 0
    for name, (disp, sig) in kernel_sigs().items():
        if names and name not in names:
            continue
        try:
            ptx, _ = cuda.compile_ptx(disp.py_func, sig, cc=(9, 0))
        except Exception as e:  # report and go on with the others
            print(f"{name:28s} COMPILE FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            rc = 1
            continue
        p = out_dir / f"{name}.ptx"
        p.write_text(ptx)
        r = subprocess.run(["ptxas", "-arch=sm_90", "-v", str(p), "-o", str(p.with_suffix(".cubin"))],
                           capture_output=True, text=True)
        txt = r.stderr + r.stdout
        regs = re.search(r"Used (\d+) registers", txt)
        stack = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", txt)
        smem = re.search(r"(\d+) bytes smem", txt)
        local = ptx.count(".local")
        print(f"{name:28s} regs {regs.group(1) if regs else '?':>4}  stack {stack.group(1) if stack else '?':>4}  "
              f"spill st/ld {stack.group(2) if stack else '?'}/{stack.group(3) if stack else '?'}  "
              f"smem {smem.group(1) if smem else 0:>6}  .local refs {local}")
        if r.returncode:
            print(txt)
            rc = 1
    print(f"(PTX and cubins in {out_dir})")
    return rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--keep", type=Path, default=None)
    a = ap.parse_args(argv)
    return report(a.names, a.keep)


if __name__ == "__main__":
    sys.exit(main())
