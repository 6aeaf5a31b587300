"""``python -m imp_kernels.bench.gemv [--out DIR] [--only SUBSTR] [--quick]``: GEMV kernels at real shapes.

For every kernel x shape: a correctness check against the fp32 reference, the CUDA-graph time of
the kernel (rotating input sets beyond L2), bytes that must move, GB/s, fraction of the copy
bandwidth measured in the same run, and torch's time for the same work. Writes
``<date>-<gpu>-gemv.json`` / ``.md`` under ``--out`` (default ``$OUT`` or ``bench/results``) and
prints the markdown table and the compiler resource report (registers, local memory, shared
memory) of every compiled kernel.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import sys
import time

import torch

from imp_kernels.bench import gemv_cases as bc
from imp_kernels.bench.util import Row, copy_bandwidth, device_name, markdown_table, time_graph, write_results

# (label, N, K) per model; N x K = out x in
MISTRAL = [("mistral qkv", 6144, 5120), ("mistral o", 5120, 4096), ("mistral gate_up", 65536, 5120),
           ("mistral down", 5120, 32768), ("mistral lm_head", 131072, 5120)]
QWEN = [("qwen in_proj_qkv", 8192, 2048), ("qwen in_proj_z", 4096, 2048), ("qwen out_proj", 2048, 4096),
        ("qwen attn q", 8192, 2048), ("qwen lm_head", 248320, 2048)]
GEMMA = [("gemma q sliding", 4096, 2816), ("gemma q global", 8192, 2816), ("gemma gate_up", 4224, 2816),
         ("gemma down", 2816, 2112), ("gemma lm_head", 262144, 2816)]


def case_list(quick: bool, stride: int = 1):
    cases = []
    for label, n, k in MISTRAL + QWEN + GEMMA:
        cases.append(lambda label=label, n=n, k=k: bc.case_nvfp4(label, n, k))
    cases.append(lambda: bc.case_moe("qwen experts", 256, 8, 2048, 512))
    cases.append(lambda: bc.case_moe("qwen experts", 256, 8, 2048, 512, shared=True))
    cases.append(lambda: bc.case_nvfp4("qwen shared gate_up", 1024, 2048))
    cases.append(lambda: bc.case_nvfp4("qwen shared down", 2048, 512))
    cases.append(lambda: bc.case_moe("gemma experts", 128, 8, 2816, 704, activation=bc.GELU_TANH))
    cases.append(lambda: bc.case_moe("qwen experts", 256, 8, 2048, 512, m=4))
    for label, n, k, m in (("mistral gate_up", 65536, 5120, 4), ("mistral gate_up", 65536, 5120, 8),
                           ("qwen attn q", 8192, 2048, 8)):
        cases.append(lambda label=label, n=n, k=k, m=m: bc.case_nvfp4(label, n, k, m=m))
    cases.append(lambda: bc.case_nvfp4("mistral o +res", 5120, 4096, residual=True))
    for label, n, k in [MISTRAL[0], MISTRAL[2], MISTRAL[3]] + QWEN[:4]:
        cases.append(lambda label=label, n=n, k=k: bc.case_fp8(label, n, k))
    cases.append(lambda: bc.case_fp8("mistral gate_up", 65536, 5120, gran="block"))
    cases.append(lambda: bc.case_fp8("qwen in_proj_qkv", 8192, 2048, gran="channel"))
    for label, n, k in [MISTRAL[0], MISTRAL[2], MISTRAL[3], GEMMA[1]]:
        cases.append(lambda label=label, n=n, k=k: bc.case_gguf(label, "Q4_K", n, k))
    for label, n, k in (MISTRAL[3], MISTRAL[4]):
        cases.append(lambda label=label, n=n, k=k: bc.case_gguf(label, "Q6_K", n, k))
    for label, n, k in (MISTRAL[0], MISTRAL[2]):
        cases.append(lambda label=label, n=n, k=k: bc.case_gguf(label, "Q8_0", n, k))
    for label, n, k in [MISTRAL[0], MISTRAL[1], MISTRAL[2], MISTRAL[3], GEMMA[1], QWEN[0], QWEN[2]]:
        cases.append(lambda label=label, n=n, k=k: bc.case_gguf_tc(label, "Q4_K", n, k))
    for label, n, k in (MISTRAL[3], MISTRAL[4]):
        cases.append(lambda label=label, n=n, k=k: bc.case_gguf_tc(label, "Q6_K", n, k))
    for label, n, k in (MISTRAL[0], MISTRAL[2]):
        cases.append(lambda label=label, n=n, k=k: bc.case_gguf_tc(label, "Q8_0", n, k))
    cases.append(lambda: bc.case_gguf_tc("mistral gate_up", "Q4_K", 65536, 5120, m=4))
    # split-K (as the fast path binds weights of fewer than two waves of blocks)
    for label, n, k in [MISTRAL[0], MISTRAL[1], MISTRAL[3], QWEN[1], QWEN[2], GEMMA[0], GEMMA[3]]:
        cases.append(lambda label=label, n=n, k=k: bc.case_nvfp4(label, n, k, splitk=True))
    for label, n, k in [MISTRAL[0], MISTRAL[3], QWEN[1], QWEN[2]]:
        cases.append(lambda label=label, n=n, k=k: bc.case_fp8(label, n, k, gran="block", splitk=True))
    cases.append(lambda: bc.case_fp8(MISTRAL[3][0], MISTRAL[3][1], MISTRAL[3][2], gran="block"))  # vs the split
    for label, n, k in [MISTRAL[0], MISTRAL[1], MISTRAL[3]]:
        cases.append(lambda label=label, n=n, k=k: bc.case_gguf_tc(label, "Q4_K", n, k, splitk=True))
    cases.append(lambda: bc.case_gguf_tc(MISTRAL[3][0], "Q6_K", MISTRAL[3][1], MISTRAL[3][2], splitk=True))
    for q in ("Q4_K", "Q6_K"):  # register-uncapped builds, for comparison
        cases.append(lambda q=q: bc.case_gguf(MISTRAL[3][0], q, MISTRAL[3][1], MISTRAL[3][2], variant="uncapped"))
    for label, n, k in (("qwen router", 256, 2048), ("qwen deltanet a/b", 32, 2048), ("gemma router", 128, 2816),
                        ("qwen shared_gate", 1, 2048), ("qwen in_proj_z", 4096, 2048), ("mistral o", 5120, 4096),
                        ("qwen lm_head", 248320, 2048), ("gemma lm_head", 262144, 2816)):
        cases.append(lambda label=label, n=n, k=k: bc.case_bf16(label, n, k))
    cases.append(lambda: bc.case_bf16("qwen router", 256, 2048, m=8))
    cases.append(lambda: bc.case_bf16("mistral o", 5120, 4096, m=8))
    if quick:
        stride = max(stride, 6)
    return cases[::stride]


def variant_cases():
    """Launch shapes and builds against the defaults, same shapes: NVFP4 and FP8 GEMVs with fewer
    warps per block (more blocks resident at once), an FP8 build with more registers, the MoE
    launches with fewer warps."""
    cases = []
    small = [MISTRAL[0], MISTRAL[1], QWEN[0], QWEN[2], GEMMA[1]]
    for w in (None, 8, 4):
        for label, n, k in small:
            cases.append(lambda label=label, n=n, k=k, w=w: bc.case_nvfp4(label, n, k, warps=w))
        cases.append(lambda w=w: bc.case_nvfp4(MISTRAL[3][0], MISTRAL[3][1], MISTRAL[3][2], splitk=True, warps=w))
    for label, n, k in [MISTRAL[0], MISTRAL[1], MISTRAL[3], GEMMA[1], QWEN[0]]:
        cases.append(lambda label=label, n=n, k=k: bc.case_gguf_tc(label, "Q4_K", n, k, splitk=label == MISTRAL[3][0]))
    qwen_fp8 = [("qwen in_proj", 12352, 2048), QWEN[2], ("qwen attn qkv", 9216, 2048), MISTRAL[0]]
    for v, w in (("default", None), ("r80", None), ("default", 8), ("default", 4)):
        for label, n, k in qwen_fp8:
            cases.append(lambda label=label, n=n, k=k, v=v, w=w: bc.case_fp8(label, n, k, gran="block", variant=v,
                                                                              warps=w))
    for v in ("default", "r80"):
        cases.append(lambda v=v: bc.case_fp8(MISTRAL[2][0], MISTRAL[2][1], MISTRAL[2][2], gran="block", variant=v))
    for gu, dn in ((None, None), (8, None), (4, None), (8, 8), (None, 8)):
        cases.append(lambda gu=gu, dn=dn: bc.case_moe("qwen experts", 256, 8, 2048, 512, shared=True, warps_gu=gu,
                                                      warps_dn=dn))
        cases.append(lambda gu=gu, dn=dn: bc.case_moe("gemma experts", 128, 8, 2816, 704, activation=bc.GELU_TANH,
                                                      warps_gu=gu, warps_dn=dn))
    return cases


def resource_report() -> list[str]:
    """Registers / local / shared memory of every compiled specialisation of our kernels."""
    import imp_kernels.gemv_bf16 as b
    import imp_kernels.gemv_fp8 as f
    import imp_kernels.gemv_gguf as g
    import imp_kernels.gemv_gguf_tc as gt
    import imp_kernels.gemv_nvfp4 as n
    import imp_kernels.moe_nvfp4 as mo
    lines = []
    kernels = {"nvfp4": n._gemv_nvfp4_kernel, "bf16": b._gemv_bf16_kernel, "fp8": f._gemv_fp8_kernel,
               "moe_gate_up": mo._moe_gate_up_kernel, "moe_down": mo._moe_down_kernel,
               "gguf_tc_q4": gt._gemv_q4_kernel, "gguf_tc_q8": gt._gemv_q8_kernel,
               **{f"gguf_{q}": k for q, k in g._KERNELS.items()}}
    kernels.update({f"nvfp4_{v}": k for v, k in n._BUILDS.compiled.items()})
    kernels.update({f"fp8_{v}": k for v, k in f._BUILDS.compiled.items()})
    kernels.update({f"gguf_{q}_uncapped": k for q, k in g._KERNELS_UNCAPPED.items() if q != "Q8_0"})
    for name, k in kernels.items():
        for ck in list(k.overloads.values()):
            try:
                lines.append(f"{name}: {ck.regs_per_thread} regs/thread, {ck.local_mem_per_thread} B local/thread, "
                             f"{ck.shared_mem_per_block} B static shared/block")
            except Exception as exc:  # reporting must not kill the benchmark
                lines.append(f"{name}: resource query failed: {exc}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.environ.get("OUT") or "bench/results")
    ap.add_argument("--only", default="", help="comma-separated substrings of 'kernel shape' to run")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--stride", type=int, default=1, help="run every n-th case (a quick sample)")
    ap.add_argument("--stem", default="")
    ap.add_argument("--variants", action="store_true", help="only the launch-shape / build comparisons (variant_cases)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    copy_gbps = copy_bandwidth()
    print(f"device: {device_name()}  copy bandwidth: {copy_gbps:.0f} GB/s", flush=True)
    rows = []
    stem = args.stem or f"{datetime.date.today().isoformat()}-{'h200' if 'H200' in device_name() else 'gpu'}-gemv"
    t_start = time.time()
    for make in variant_cases() if args.variants else case_list(args.quick, args.stride):
        t0 = time.time()
        case = make()
        if args.only and not any(o in f"{case.kernel} {case.shape}" for o in args.only.split(",")):
            del case
            continue
        try:
            err = case.check()
            us = time_graph(case.run, [(i,) for i in range(case.nsets)])
            tus = time_graph(case.torch_run, [(i,) for i in range(case.nsets)]) if case.torch_run else None
            note = (case.note + " " if case.note else "") + f"rel err {err:.1e}"
            rows.append(Row(case.kernel, case.shape, case.m, us, case.bytes_moved, tus, case.torch_what,
                            note).finish(copy_gbps))
            r = rows[-1]
            write_results(rows, copy_gbps, args.out, stem, extra={"partial": True})
            print(f"{r.kernel:12s} {r.shape:42s} M={r.m} {r.time_us:8.1f} us {r.gbps:6.0f} GB/s "
                  f"{100 * r.frac_copy:4.0f}%  torch {tus or 0:8.1f} us  err {err:.1e}  ({time.time() - t0:.1f}s)",
                  flush=True)
        except Exception as exc:
            print(f"FAILED {case.kernel} {case.shape}: {type(exc).__name__}: {exc}", flush=True)
        del case
        gc.collect()
        torch.cuda.empty_cache()
    res_lines = resource_report()
    write_results(rows, copy_gbps, args.out, stem, extra={"resources": res_lines,
                                                          "seconds": time.time() - t_start})
    print(markdown_table(rows, copy_gbps, f"GEMV kernels on {device_name()}"))
    print("\n".join(res_lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
