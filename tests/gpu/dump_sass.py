"""Write the SASS of the compiled GEMV kernels (after a bench run in the same process or a fresh
compile) so fusion, 16-byte loads and HMMA use can be read: ``python tests/gpu/dump_sass.py OUTFILE``."""

import sys

import torch

from imp_kernels.bench import gemv_cases as bc


def main(path: str) -> None:
    import imp_kernels.gemv_gguf as g
    import imp_kernels.gemv_nvfp4 as n
    import imp_kernels.moe_nvfp4 as mo

    bc.SINGLE_SET = True
    for mk in (lambda: bc.case_nvfp4("s", 512, 2048), lambda: bc.case_gguf("s", "Q4_K", 64, 2048),
               lambda: bc.case_moe("s", 8, 2, 2048, 512)):
        mk().run(0)
    torch.cuda.synchronize()
    with open(path, "w") as fh:
        for name, k in (("nvfp4", n._gemv_nvfp4_kernel), ("gguf_q4_k", g._KERNELS["Q4_K"]),
                        ("moe_down", mo._moe_down_kernel)):
            for sig in k.overloads:
                try:
                    fh.write(f"==== {name} {sig}\n{k.inspect_sass(sig)}\n")
                except Exception as exc:
                    fh.write(f"==== {name}: inspect_sass failed: {exc}\n")


if __name__ == "__main__":
    main(sys.argv[1])
