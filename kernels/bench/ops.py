"""Time the decode-op kernels at the real model shapes (GPU machine).

    python3 -m imp_kernels.bench.ops --out DIR [--only attn_decode,sample] [--tiny]

For every case of ``imp_kernels.bench.ops_cases``: the kernel's time per call from CUDA-graph
replays over rotating input sets larger than L2 (``imp_kernels.bench.util.time_graph``), the
bytes one call must move, achieved GB/s and the fraction of the copy bandwidth measured in the
same process, and the torch equivalent's time the same way (eager launches if it cannot be
captured). Extra rows: the
attention split count swept around its default for two shapes; the DeltaNet step's state-only
bandwidth (the issue's target is >= 50% of copy bandwidth for its state read + write). Also
records each kernel's registers / local memory / shared memory as loaded. Writes the results
as JSON and as a markdown table (``bench_ops`` + ``.json`` / ``.md``) into ``--out`` and prints
the table.

``--tiny`` runs the same code under the CUDA simulator at tiny shapes with a host clock (numbers
meaningless; it checks that the script works without a GPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _resources() -> dict:
    """Registers, local and shared memory of each loaded kernel specialisation."""
    from imp_kernels.bench.ptx_report import kernel_sigs

    out = {}
    for name, (disp, _sig) in kernel_sigs().items():
        try:
            regs = disp.get_regs_per_thread()
            local = disp.get_local_mem_per_thread()
            shared = disp.get_shared_mem_per_block()
            if isinstance(regs, dict):  # several specialisations: keep them all, keyed by index
                regs, local, shared = (list(d.values()) for d in (regs, local, shared))
            out[name] = {"regs": regs, "local_bytes": local, "shared_bytes": shared}
        except Exception as e:  # not compiled in this run, or not available in this numba
            out[name] = {"error": f"{type(e).__name__}: {e}"[:120]}
    return out


def _host_time(fn, arg_sets, reps: int = 2) -> float:
    t = time.perf_counter()
    for i in range(reps):
        fn(*arg_sets[i % len(arg_sets)])
    return (time.perf_counter() - t) / reps * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="time the decode-op kernels")
    ap.add_argument("--out", required=True, help="directory for the bench_ops JSON and markdown files")
    ap.add_argument("--only", default="", help="comma-separated kernel names")
    ap.add_argument("--tiny", action="store_true", help="simulator, tiny shapes, host clock")
    a = ap.parse_args(argv)
    if a.tiny:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    import torch

    from imp_kernels.attn_decode import attn_decode, attn_decode_plan
    from imp_kernels.bench import util as bu
    from imp_kernels.bench.ops_cases import all_cases
    from imp_kernels.compat import gpu_available

    if not a.tiny and not gpu_available():
        print("no CUDA device: use --tiny for a dry run under the simulator", file=sys.stderr)
        return 2
    device = "cpu" if a.tiny else "cuda"
    only = {s for s in a.only.split(",") if s}
    t_start = time.time()
    copy_gbps = 1.0 if a.tiny else bu.copy_bandwidth()

    def timed(fn, sets):
        if a.tiny:
            return _host_time(fn, sets)
        try:
            return bu.time_graph(fn, sets)
        except Exception:  # not capturable: eager launches (includes Python launch cost)
            torch.cuda.synchronize()
            return bu.time_eager(fn, sets)

    rows = []
    for case in all_cases(device, a.tiny):
        if only and case.kernel not in only:
            continue
        try:
            n_sets = 2 if a.tiny else bu.sets_needed(case.nbytes)
            sets = [(case.build(1000 + s),) for s in range(n_sets)]
            t_k = timed(lambda kw, c=case: c.fn(**kw), sets)
            torch_fn = case.torch_fn or case.ref
            t_t = timed(lambda kw, f=torch_fn: f(**kw), sets)
            note = f"{n_sets} input sets"
            if case.kernel == "gdn_decode":
                sb = case.extra["state_bytes_rw"]
                frac = sb / (t_k * 1e-6) / 1e9 / copy_gbps
                note += f"; state read+write alone: {100 * frac:.0f}% of copy bw (target >= 50%)"
            if "splits" in case.extra:
                note += f"; splits {case.extra['splits']}"
            rows.append(bu.Row(case.kernel, case.shape, case.m, t_k, case.nbytes, t_t, case.torch_what, note)
                        .finish(copy_gbps))
            r = rows[-1]
            print(f"{case.kernel:12s} {case.shape:58s} {r.time_us:9.1f} us {r.gbps:7.0f} GB/s "
                  f"{100 * r.frac_copy:4.0f}%  torch {t_t:9.1f} us", flush=True)
            if case.kernel == "attn_decode" and case.extra["ctx"] in ((160,) if a.tiny else (4096, 32768)) and (
                    "qwen" in case.shape or "mistral" in case.shape):
                ex = case.extra
                base = ex["splits"]
                for sp in sorted({max(1, base // 2), base * 2}):
                    plan = attn_decode_plan(1, ex["hkv"], ex["d"], ex["cap"], device, splits=sp)
                    kwargs = dict(ex["kwargs"], plan=plan)
                    t_s = timed(lambda kw, kwargs=kwargs: attn_decode(**kw, **kwargs), sets)
                    rows.append(bu.Row(case.kernel, case.shape, 1, t_s, case.nbytes, None, "",
                                       f"split sweep: splits {sp} (default {base})").finish(copy_gbps))
                    print(f"{'':12s} {'  splits ' + str(sp):58s} {t_s:9.1f} us", flush=True)
        except Exception as e:  # one broken case must not hide the others' numbers
            msg = f"ERROR {type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}"
            print(f"{case.kernel:12s} {case.shape:58s} {msg}", flush=True)
            rows.append(bu.Row(case.kernel, case.shape, case.m, 0.0, case.nbytes, None, case.torch_what, msg))
            sets = None
        del sets
        if not a.tiny:
            torch.cuda.empty_cache()

    extra = {"resources": {} if a.tiny else _resources(), "tiny": a.tiny,
             "seconds": round(time.time() - t_start, 1)}
    jp, mp = bu.write_results(rows, copy_gbps, a.out, "bench_ops", extra=extra,
                              title=f"decode-op kernels on {bu.device_name()}{' (TINY, simulator)' if a.tiny else ''}")
    print()
    print(mp.read_text())
    if extra["resources"]:
        print("| kernel | regs | local bytes | shared bytes |\n|---|---|---|---|")
        for k, v in extra["resources"].items():
            print(f"| {k} | {v.get('regs', '-')} | {v.get('local_bytes', '-')} | {v.get('shared_bytes', '-')} |")
    print(f"wrote {jp} and {mp} in {extra['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
