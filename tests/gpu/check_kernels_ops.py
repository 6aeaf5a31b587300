"""Decode-op kernels vs their torch references at the real model shapes (GPU machine).

    python3 tests/gpu/check_kernels_ops.py            # on the GPU: real shapes, exits 1 on a failure
    python3 tests/gpu/check_kernels_ops.py --tiny     # anywhere: CUDA simulator, tiny shapes

Every case of ``imp_kernels.bench.ops_cases`` (RMSNorm, fused norm+RoPE+KV write, decode attention
at contexts 512/4096/32768, the Gated DeltaNet step, the routers, sampling at V=248320/262144) is
run on fresh random inputs with its pure outputs poisoned first, against the kernel module's torch
reference and again against the engine's own layers ("vs engine" rows, ``tests/kernel_oracles.py``);
then the sampling kernel is compared with ``imp_core.run.sampling.Sampler`` over several
consecutive steps. Prints a pass/fail
table (the last lines of the output) and exits non-zero if anything failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: kernel_oracles


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="decode-op kernels vs torch references")
    ap.add_argument("--tiny", action="store_true", help="CUDA simulator on CPU at tiny shapes")
    ap.add_argument("--only", default="", help="comma-separated kernel names to run")
    ap.add_argument("--steps", type=int, default=0, help="sampling steps compared with Sampler")
    a = ap.parse_args(argv)
    if a.tiny:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    import torch

    from imp_kernels.compat import SIMULATOR, gpu_available

    if a.tiny and not SIMULATOR:
        print("--tiny needs the CUDA simulator, but numba.cuda was already imported", file=sys.stderr)
        return 2
    if not a.tiny and not gpu_available():
        print("no CUDA device: run with --tiny for the simulator", file=sys.stderr)
        return 2
    from imp_core.run.sampling import Sampler
    from imp_kernels.bench.ops_cases import all_cases, run_check
    from kernel_oracles import engine_cases, sampling_params

    device = "cpu" if a.tiny else "cuda"
    only = {s for s in a.only.split(",") if s}
    rows = []
    t_all = time.time()
    cases = all_cases(device, a.tiny)
    for i, case in enumerate(cases + engine_cases(cases)):
        if only and case.kernel not in only:
            continue
        t0 = time.time()
        try:
            ok, detail = run_check(case, seed=100 + i)
        except Exception as e:  # a crash is a failure of that row, the others still run
            ok, detail = False, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        rows.append((case.kernel, case.shape, ok, detail, time.time() - t0))
        print(f"{'PASS' if ok else 'FAIL'}  {case.kernel:12s} {case.shape:58s} {detail}", flush=True)

    steps = a.steps or (2 if a.tiny else 12)
    if not only or "sample" in only:
        for case in (c for c in all_cases(device, a.tiny) if c.kernel == "sample"):
            t0 = time.time()
            try:
                params = sampling_params(case.extra["params"], case.extra["seed"])
                kw = case.build(7)
                mism = 0
                s_ref = Sampler(params, kw["logits"].shape[1], kw["logits"].device)
                for st in range(steps):
                    kw["logits"] = case.build(1000 + st)["logits"]
                    case.fn(**kw)
                    want = int(s_ref.sample(kw["logits"]))
                    mism += int(int(kw["tokens"]) != want)
                ok = mism == 0 and int(kw["step"]) == steps
                detail = f"{steps - mism}/{steps} steps give Sampler's token"
            except Exception as e:
                ok, detail = False, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            rows.append(("sample/steps", case.shape, ok, detail, time.time() - t0))
            print(f"{'PASS' if ok else 'FAIL'}  {'sample/steps':12s} {case.shape:58s} {detail}", flush=True)

    n_fail = sum(1 for r in rows if not r[2])
    print()
    dev_name = torch.cuda.get_device_name() if device == "cuda" else "simulator"
    print(f"| kernel | shape | result | detail | s |  (device: {dev_name})")
    print("|---|---|---|---|---|")
    for k, s, ok, d, dt in rows:
        print(f"| {k} | {s} | {'pass' if ok else 'FAIL'} | {d} | {dt:.1f} |")
    print(f"\n{len(rows) - n_fail}/{len(rows)} passed in {time.time() - t_all:.0f} s")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
