"""GPU check: every GEMV kernel against its fp32 reference at the real model shapes.

Run on a CUDA machine (not under pytest, not under the simulator), from the repo root with
``imp_kernels`` importable::

    python tests/gpu/check_kernels.py            # prints a pass/fail table, exit 1 on any fail

Covers the intrinsics first (so a wrong fragment layout or conversion shows up by name), then
each kernel with M = 1 and M > 1, bf16 and fp32 outputs, fused residuals, the three FP8 scale
granularities, the three GGUF types and the MoE with/without the shared expert. Tolerances: bf16
outputs rel err < 1e-2, fp32 outputs < 2e-3 (f16 activations in the quantized kernels).
"""

from __future__ import annotations

import sys
import time
import traceback

import numpy as np
import torch

from imp_kernels import dtypes, ptx
from imp_kernels.bench import gemv_cases as bc
from imp_kernels.compat import cuda
from imp_kernels.gemv_bf16 import gemv_bf16, gemv_bf16_ref
from imp_kernels.gemv_fp8 import gemv_fp8, gemv_fp8_ref
from imp_kernels.gemv_gguf import gemv_gguf, gemv_gguf_ref
from imp_kernels.gemv_nvfp4 import gemv_nvfp4, gemv_nvfp4_ref
from imp_kernels.gguf_common import gguf_device_buffer
from imp_kernels.launch import jit, launch
from imp_kernels.repack import fp8_tile, nvfp4_tile

DEV = "cuda"
results: list[tuple[str, str, float, float, bool]] = []


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def record(name, detail, err, tol):
    ok = err < tol
    results.append((name, detail, err, tol, ok))
    print(f"{'PASS' if ok else 'FAIL'} {name:14s} {detail:48s} err {err:.2e} (tol {tol:.0e})", flush=True)


@jit
def _decode_all(b16, f8, f4, h16, out, outb):
    i = cuda.threadIdx.x
    out[0, i] = dtypes.bf16_bits_to_f32(b16[i])
    out[1, i] = dtypes.e4m3_to_f32(f8[i])
    out[2, i] = dtypes.e2m1_to_f32(f4[i])
    out[3, i] = dtypes.f16_bits_to_f32(h16[i])
    outb[i] = dtypes.f32_to_bf16_bits(out[3, i] * np.float32(1.001))


@jit
def _mma_probe(a, b, out_f16, out_bf16):
    lane = cuda.threadIdx.x
    z = np.float32(0.0)
    d = ptx.mma_f16(a[4 * lane], a[4 * lane + 1], a[4 * lane + 2], a[4 * lane + 3], b[2 * lane], b[2 * lane + 1],
                    z, z, z, z)
    for i in range(4):
        out_f16[4 * lane + i] = d[i]
    d = ptx.mma_bf16(a[4 * lane], a[4 * lane + 1], a[4 * lane + 2], a[4 * lane + 3], b[2 * lane],
                     b[2 * lane + 1], z, z, z, z)
    for i in range(4):
        out_bf16[4 * lane + i] = d[i]


def _frag_words(mat: torch.Tensor, kind: str) -> torch.Tensor:
    """Pack A [16,16] or B^T [8,16] (rows = n) into the lanes' registers per the PTX fragment layout."""
    bits = mat.view(torch.int16).to(torch.int64) & 0xFFFF
    words = []
    for lane in range(32):
        g, t = divmod(lane, 4)
        if kind == "A":
            pairs = [(g, 2 * t), (g + 8, 2 * t), (g, 2 * t + 8), (g + 8, 2 * t + 8)]
        else:
            pairs = [(g, 2 * t), (g, 2 * t + 8)]
        for r, c in pairs:
            words.append(int(bits[r, c]) | (int(bits[r, c + 1]) << 16))
    w = torch.tensor(words, dtype=torch.int64)
    return torch.where(w >= 2**31, w - 2**32, w).to(torch.int32)


def check_intrinsics():
    g = torch.Generator().manual_seed(1)
    n = 256
    b16 = (torch.randn(n, generator=g) * 100).bfloat16().to(DEV)
    f8 = torch.randperm(256, generator=g).to(torch.uint8).to(DEV)
    f4 = torch.randint(0, 16, (n,), generator=g, dtype=torch.uint8).to(DEV)
    h16 = (torch.randn(n, generator=g) * 10).half().to(DEV)
    out = torch.full((4, n), float("nan"), device=DEV)
    outb = torch.zeros(n, dtype=torch.bfloat16, device=DEV)
    launch(_decode_all, 1, n, b16, f8, f4, h16.view(torch.uint16), out, outb)
    _sync()
    ref8 = f8.view(torch.float8_e4m3fn).float()
    fin = ~ref8.isnan()
    e2 = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], device=DEV)
    record("intrinsic", "bf16 bits -> f32", float((out[0] != b16.float()).sum()), 0.5)
    record("intrinsic", "e4m3 -> f32 (cvt.rn.f16x2.e4m3x2)",
           float((out[1][fin] != ref8[fin]).sum() + (out[1].isnan() != ref8.isnan()).sum()), 0.5)
    record("intrinsic", "e2m1 -> f32", float((out[2] != e2[f4.long()]).sum()), 0.5)
    record("intrinsic", "f16 bits -> f32", float((out[3] != h16.float()).sum()), 0.5)
    record("intrinsic", "f32 -> bf16 RNE", float((outb != (h16.float() * np.float32(1.001)).bfloat16()).sum()), 0.5)
    a = torch.randn(16, 16, generator=g)
    bt = torch.randn(8, 16, generator=g)
    for dt, name in ((torch.float16, "mma f16"), (torch.bfloat16, "mma bf16")):
        aw = _frag_words(a.to(dt), "A").to(DEV)
        bw = _frag_words(bt.to(dt), "B").to(DEV)
        o16 = torch.full((128,), float("nan"), device=DEV)
        ob16 = torch.full((128,), float("nan"), device=DEV)
        launch(_mma_probe, 1, 32, aw, bw, o16, ob16)
        _sync()
        o = o16 if dt == torch.float16 else ob16
        d = torch.empty(16, 8, device=DEV)
        for lane in range(32):
            gg, t = divmod(lane, 4)
            d[gg, 2 * t], d[gg, 2 * t + 1], d[gg + 8, 2 * t], d[gg + 8, 2 * t + 1] = o[4 * lane: 4 * lane + 4]
        ref = (a.to(dt).double() @ bt.to(dt).double().t()).to(DEV)
        record("intrinsic", name + " m16n8k16 fragment layout", float((d.double() - ref).norm() / ref.norm()), 1e-5)


def run_case(make):
    case = make()
    record(case.kernel, f"{case.shape} M={case.m}", case.check(), 1e-2)


def variants():
    """fp32 outputs + residual through each module's own torch reference (same signature)."""
    g = torch.Generator(device=DEV).manual_seed(3)
    m, n, k = 3, 5120, 4096
    x = torch.randn(m, k, device=DEV, generator=g).bfloat16()
    res = torch.randn(m, n, device=DEV, generator=g).bfloat16()
    codes, scales, gs = bc.nvfp4_random(n, k)
    ct, st = nvfp4_tile(codes, scales)
    out, ref = torch.full((m, n), float("nan"), device=DEV), torch.full((m, n), float("nan"), device=DEV)
    gemv_nvfp4(x, ct, st, gs, out, residual=res)
    gemv_nvfp4_ref(x, ct, st, gs, ref, residual=res)
    record("nvfp4", f"fp32 out +residual {n}x{k} M={m}", bc.rel(out, ref), 2e-3)
    w = (torch.randn(n, k, device=DEV, generator=g) * 30).to(torch.float8_e4m3fn)
    sc = torch.rand(-(-n // 128), -(-k // 128), device=DEV, generator=g) * 0.003
    ft = fp8_tile(w)
    gemv_fp8(x, ft, sc, out, residual=res)
    gemv_fp8_ref(x, ft, sc, ref, residual=res)
    record("fp8-block", f"fp32 out +residual {n}x{k} M={m}", bc.rel(out, ref), 2e-3)
    wb = (torch.randn(n, k, device=DEV, generator=g) * 0.05).bfloat16()
    gemv_bf16(x, wb, out, residual=res)
    gemv_bf16_ref(x, wb, ref, residual=res)
    record("bf16", f"fp32 out +residual {n}x{k} M={m}", bc.rel(out, ref), 1e-4)
    for q in ("Q8_0", "Q4_K", "Q6_K"):
        raw = bc.gguf_random(q, n, k)
        buf = gguf_device_buffer(raw)
        gemv_gguf(x, buf, q, n, out, residual=res)
        gemv_gguf_ref(x, buf, q, n, ref, residual=res)
        record(f"gguf-{q}", f"fp32 out +residual {n}x{k} M={m}", bc.rel(out, ref), 1e-4)


def main() -> int:
    import imp_kernels.bench.gemv as bench

    bc.SINGLE_SET = True
    t0 = time.time()
    makers = [lambda: check_intrinsics(), lambda: variants()]
    shapes = bench.MISTRAL + bench.QWEN + bench.GEMMA
    makers += [lambda l=l, n=n, k=k: run_case(lambda: bc.case_nvfp4(l, n, k)) for l, n, k in shapes]
    makers += [lambda: run_case(lambda: bc.case_nvfp4("qwen attn q", 8192, 2048, m=8)),
               lambda: run_case(lambda: bc.case_nvfp4("mistral o", 5120, 4096, m=5, residual=True))]
    makers += [lambda l=l, n=n, k=k, gr=gr: run_case(lambda: bc.case_fp8(l, n, k, m=2, gran=gr))
               for (l, n, k), gr in zip(bench.QWEN[:4] + bench.MISTRAL[3:4], ("tensor", "channel", "block", "tensor", "block"))]
    makers += [lambda l=l, n=n, k=k, q=q: run_case(lambda: bc.case_gguf(l, q, n, k, m=2))
               for q in ("Q8_0", "Q4_K", "Q6_K") for l, n, k in (bench.MISTRAL[0], bench.GEMMA[3], bench.GEMMA[1])
               if q == "Q8_0" or k % 256 == 0]  # K-quants need K % 256 (llama.cpp falls back otherwise)
    makers += [lambda q=q: run_case(lambda: bc.case_gguf("uncapped", q, 5120, 4096, m=2, variant="uncapped"))
               for q in ("Q4_K", "Q6_K")]
    makers += [lambda l=l, n=n, k=k: run_case(lambda: bc.case_bf16(l, n, k, m=3))
               for l, n, k in (("qwen router", 256, 2048), ("deltanet a", 32, 2048), ("shared_gate", 1, 2048),
                               ("qwen lm_head", 248320, 2048))]
    makers += [lambda: run_case(lambda: bc.case_moe("qwen experts", 256, 8, 2048, 512, shared=True)),
               lambda: run_case(lambda: bc.case_moe("qwen experts", 256, 8, 2048, 512, m=3, shared=True)),
               lambda: run_case(lambda: bc.case_moe("gemma experts", 128, 8, 2816, 704, m=2,
                                                    activation=bc.GELU_TANH))]
    for mk in makers:
        try:
            mk()
        except Exception as exc:
            results.append(("error", f"{type(exc).__name__}: {exc}"[:120], float("inf"), 0, False))
            traceback.print_exc()
        torch.cuda.empty_cache()
    print(f"\n| result | kernel | case | rel err | tol |\n|---|---|---|---|---|")
    for name, detail, err, tol, ok in results:
        print(f"| {'pass' if ok else 'FAIL'} | {name} | {detail} | {err:.2e} | {tol:.0e} |")
    nfail = sum(not r[4] for r in results)
    print(f"\n{len(results) - nfail} passed, {nfail} failed in {time.time() - t0:.0f} s")
    return 1 if nfail else 0


if __name__ == "__main__":
    sys.exit(main())
