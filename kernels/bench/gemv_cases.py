"""Benchmark / GPU-check cases: random weights at the real shapes, one ``Case`` per kernel x shape.

A case owns ``nsets`` independent input sets (more than the L2 holds when the weights are
small), ``run(i)`` launches the kernel on set i, ``torch_run(i)`` does the same work the way torch
would without our kernel (bf16 cuBLAS on a dequantised weight), and ``check()`` returns the
relative error of the kernel's output against an fp32 reference computed from the checkpoint
layout (not from the tiled copy). Weights are random bit patterns of valid codes: GEMV speed does
not depend on their values, and the reference covers whatever they are.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from imp_kernels.bench.util import sets_needed
from imp_kernels.gemv_bf16 import gemv_bf16
from imp_kernels.gemv_fp8 import fp8_dequant, gemv_fp8
from imp_kernels.gemv_gguf import gemv_gguf, gguf_dequant
from imp_kernels.gemv_nvfp4 import gemv_nvfp4, nvfp4_dequant
from imp_kernels.gguf_common import gguf_device_buffer
from imp_kernels.moe_nvfp4 import GELU_TANH, SILU, moe_nvfp4, moe_scratch_shape
from imp_kernels.repack import GGUF_BLOCKS, fp8_tile, nvfp4_experts_tile, nvfp4_tile

DEV = "cuda"
SINGLE_SET = False  # the GPU check script sets this: one input set per case, no rotation


def _nsets(nbytes: int) -> int:
    return 1 if SINGLE_SET else sets_needed(nbytes)


@dataclasses.dataclass
class Case:
    kernel: str
    shape: str
    m: int
    nsets: int
    bytes_moved: int
    run: Callable[[int], None]
    check: Callable[[], float]
    torch_run: Callable[[int], None] | None = None
    torch_what: str = ""
    note: str = ""


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    o, r = out.double(), ref.double()
    if not torch.isfinite(o).all():
        return float("inf")
    return float((o - r).norm() / r.norm())


def _x(m, k, nsets, scale=1.0):
    return [(torch.randn(m, k, device=DEV) * scale).bfloat16() for _ in range(nsets)]


def nvfp4_random(n, k):
    codes = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device=DEV)
    scales = torch.randint(0x28, 0x48, (n, k // 16), dtype=torch.uint8, device=DEV)  # e4m3 ~0.25..4
    gs = torch.full((1,), 0.01, device=DEV)
    return codes, scales, gs


def _splitk(on, n):
    """A split-K workspace per weight set (as the fast path binds one per weight), or None."""
    from imp_kernels.mma_frag import splitk_workspace

    return (lambda: splitk_workspace(n, DEV)) if on else (lambda: None)


def case_nvfp4(name, n, k, m=1, residual=False, splitk=False, variant="default", warps=None):
    codes, scales, gs = nvfp4_random(n, k)
    ct, st = nvfp4_tile(codes, scales)
    wbytes = ct.numel() * 4 + st.numel() * 2
    nsets = _nsets(wbytes)
    cts = [ct] + [ct.clone() for _ in range(nsets - 1)]
    sts = [st] + [st.clone() for _ in range(nsets - 1)]
    xs = _x(m, k, nsets)
    outs = [torch.empty(m, n, dtype=torch.bfloat16, device=DEV) for _ in range(nsets)]
    res = [torch.randn(m, n, device=DEV).bfloat16() for _ in range(nsets)] if residual else [None] * nsets
    wbf = nvfp4_dequant(codes, scales, gs).bfloat16()
    wbfs = [wbf] + [wbf.clone() for _ in range(min(nsets, _nsets(wbf.numel() * 2)) - 1)]
    wss = [_splitk(splitk, n)() for _ in range(nsets)]

    def run(i):
        gemv_nvfp4(xs[i], cts[i], sts[i], gs, outs[i], residual=res[i], workspace=wss[i], variant=variant,
                   warps=warps)

    def trun(i):
        torch.mm(xs[i], wbfs[i % len(wbfs)].t(), out=outs[i])

    def check():
        run(0)
        ref = xs[0].float() @ nvfp4_dequant(codes, scales, gs).t()
        if res[0] is not None:
            ref = ref + res[0].float()
        return rel(outs[0], ref)

    moved = wbytes + m * k * 2 + m * n * 2 * (2 if residual else 1)
    return Case("nvfp4" + ("-splitk" if splitk else "") + ("" if variant == "default" else "-" + variant)
                + (f"-w{warps}" if warps else ""),
                f"{name} {n}x{k}", m, nsets, moved, run, check, trun,
                "torch.mm bf16 (dequantised W)")


def case_fp8(name, n, k, m=1, gran="tensor", splitk=False, variant="default", warps=None):
    w = (torch.randn(n, k, device=DEV) * 30).clamp(-440, 440).to(torch.float8_e4m3fn)
    if gran == "tensor":
        scale = torch.full((1,), 0.003, device=DEV)
    elif gran == "channel":
        scale = torch.rand(n, device=DEV) * 0.004 + 0.001
    else:
        scale = torch.rand(-(-n // 128), -(-k // 128), device=DEV) * 0.004 + 0.001
    ct = fp8_tile(w)
    wbytes = ct.numel() * 4
    nsets = _nsets(wbytes)
    cts = [ct] + [ct.clone() for _ in range(nsets - 1)]
    xs = _x(m, k, nsets)
    outs = [torch.empty(m, n, dtype=torch.bfloat16, device=DEV) for _ in range(nsets)]
    wbf = fp8_dequant(w.view(torch.uint8), scale).bfloat16()
    wbfs = [wbf] + [wbf.clone() for _ in range(min(nsets, _nsets(wbf.numel() * 2)) - 1)]
    wss = [_splitk(splitk, n)() for _ in range(nsets)]

    def run(i):
        gemv_fp8(xs[i], cts[i], scale, outs[i], workspace=wss[i], variant=variant, warps=warps)

    def trun(i):
        torch.mm(xs[i], wbfs[i % len(wbfs)].t(), out=outs[i])

    def check():
        run(0)
        return rel(outs[0], xs[0].float() @ fp8_dequant(w.view(torch.uint8), scale).t())

    return Case(f"fp8-{gran}" + ("-splitk" if splitk else "") + ("" if variant == "default" else "-" + variant)
                + (f"-w{warps}" if warps else ""), f"{name} {n}x{k}", m, nsets,
                wbytes + m * k * 2 + m * n * 2, run, check, trun, "torch.mm bf16 (dequantised W)")


def gguf_random(qtype, n, k):
    elems, nb = GGUF_BLOCKS[qtype]
    b = torch.randint(0, 256, (n, k // elems, nb), dtype=torch.uint8, device=DEV)

    def f16(lo, hi, shape):
        return (torch.rand(shape, device=DEV) * (hi - lo) + lo).half().view(torch.uint8).reshape(*shape[:-1], -1)

    if qtype == "Q8_0":
        b[..., 0:2] = f16(1e-3, 4e-3, (n, k // elems, 1))
    elif qtype == "Q4_K":
        b[..., 0:2] = f16(1e-4, 4e-4, (n, k // elems, 1))
        b[..., 2:4] = f16(1e-4, 4e-4, (n, k // elems, 1))
    elif qtype == "Q6_K":
        b[..., 192:208] = torch.randint(-64, 64, (n, k // elems, 16), device=DEV).to(torch.int8).view(torch.uint8)
        b[..., 208:210] = f16(1e-4, 4e-4, (n, k // elems, 1))
    return b.reshape(-1)


def case_gguf(name, qtype, n, k, m=1, variant="capped"):
    raw = gguf_random(qtype, n, k)
    buf = gguf_device_buffer(raw)
    wbytes = raw.numel()
    nsets = _nsets(wbytes)
    bufs = [buf] + [buf.clone() for _ in range(nsets - 1)]
    xs = _x(m, k, nsets)
    outs = [torch.empty(m, n, dtype=torch.bfloat16, device=DEV) for _ in range(nsets)]
    wf = gguf_dequant(raw, qtype, n, k)
    wbf = wf.bfloat16()
    del wf
    wbfs = [wbf] + [wbf.clone() for _ in range(min(nsets, _nsets(wbf.numel() * 2)) - 1)]

    def run(i):
        gemv_gguf(xs[i], bufs[i], qtype, n, outs[i], variant=variant)

    def trun(i):
        torch.mm(xs[i], wbfs[i % len(wbfs)].t(), out=outs[i])

    def check():
        run(0)
        return rel(outs[0], xs[0].float() @ gguf_dequant(raw, qtype, n, k).t())

    return Case(f"gguf-{qtype}" + ("" if variant == "capped" else "-" + variant), f"{name} {n}x{k}", m, nsets, wbytes + m * k * 2 + m * n * 2, run, check, trun,
                "torch.mm bf16 (dequantised W)")


def case_gguf_tc(name, qtype, n, k, m=1, splitk=False):
    """The tensor-core GGUF GEMV on the same random blocks, re-tiled as the fast path binds them."""
    from imp_kernels.gemv_gguf_tc import gemv_gguf_tc
    from imp_kernels.repack_gguf import tc_form, tc_tile

    raw = gguf_random(qtype, n, k)
    assert tc_form(raw, qtype, n, k)[0] is not None
    kind, codes, scales, unscale = tc_tile(raw, qtype, n, k)
    wbytes = codes.numel() * 4 + scales.numel() * scales.element_size()
    nsets = _nsets(wbytes)
    sets = [(codes, scales)] + [(codes.clone(), scales.clone()) for _ in range(nsets - 1)]
    xs = _x(m, k, nsets)
    outs = [torch.empty(m, n, dtype=torch.bfloat16, device=DEV) for _ in range(nsets)]
    wss = [_splitk(splitk, n)() for _ in range(nsets)]

    def run(i):
        gemv_gguf_tc(xs[i], kind, sets[i][0], sets[i][1], outs[i], unscale=unscale, workspace=wss[i])

    def check():
        run(0)
        return rel(outs[0], xs[0].float() @ gguf_dequant(raw, qtype, n, k).t())

    return Case(f"gguf-tc-{qtype}" + ("-splitk" if splitk else ""), f"{name} {n}x{k}", m, nsets,
                wbytes + m * k * 2 + m * n * 2, run, check, None, "")


def case_bf16(name, n, k, m=1):
    w = (torch.randn(n, k, device=DEV) * 0.05).bfloat16()
    wbytes = w.numel() * 2
    nsets = _nsets(wbytes)
    ws = [w] + [w.clone() for _ in range(nsets - 1)]
    xs = _x(m, k, nsets)
    outs = [torch.empty(m, n, dtype=torch.bfloat16, device=DEV) for _ in range(nsets)]

    def run(i):
        gemv_bf16(xs[i], ws[i], outs[i])

    def trun(i):
        torch.mm(xs[i], ws[i].t(), out=outs[i])

    def check():
        run(0)
        return rel(outs[0], xs[0].float() @ w.float().t())

    return Case("bf16", f"{name} {n}x{k}", m, nsets, wbytes + m * k * 2 + m * n * 2, run, check, trun,
                "torch.mm bf16 (cuBLAS)")


def case_moe(name, e, topk, hdim, inter, m=1, shared=False, activation=SILU, nsets=24, warps_gu=None, warps_dn=None):
    nsets = 1 if SINGLE_SET else nsets
    gc, gs_, _ = nvfp4_random(e * 2 * inter, hdim)
    dc, ds_, _ = nvfp4_random(e * hdim, inter)
    gu_c, gu_s = nvfp4_experts_tile(gc.view(e, 2 * inter, -1), gs_.view(e, 2 * inter, -1))
    dn_c, dn_s = nvfp4_experts_tile(dc.view(e, hdim, -1), ds_.view(e, hdim, -1))
    gu_g = torch.rand(e, 2, device=DEV) * 0.004 + 0.001
    dn_g = torch.rand(e, device=DEV) * 0.004 + 0.001
    sh = None
    logit = None
    if shared:
        sgc, sgs, _ = nvfp4_random(2 * inter, hdim)
        sdc, sds, _ = nvfp4_random(hdim, inter)
        t1, t2 = nvfp4_tile(sgc, sgs)
        t3, t4 = nvfp4_tile(sdc, sds)
        sh = (t1[None], t2[None], torch.full((1, 2), 0.002, device=DEV), t3[None], t4[None],
              torch.full((1,), 0.002, device=DEV))
    xs = _x(m, hdim, nsets)
    ids = [torch.stack([torch.randperm(e, device=DEV)[:topk] for _ in range(m)]).to(torch.int32)
           for _ in range(nsets)]
    wts = [torch.softmax(torch.randn(m, topk, device=DEV), -1) for _ in range(nsets)]
    logits = [torch.randn(m, device=DEV) for _ in range(nsets)] if shared else [None] * nsets
    outs = [torch.empty(m, hdim, dtype=torch.bfloat16, device=DEV) for _ in range(nsets)]
    hs = [torch.empty(moe_scratch_shape(m, topk, inter, shared), device=DEV) for _ in range(nsets)]
    slots = topk + int(shared)
    per_expert = (2 * inter * hdim + hdim * inter) * 9 // 16
    moved = m * slots * per_expert + m * hdim * 4

    def run(i):
        moe_nvfp4(xs[i], ids[i], wts[i], (gu_c, gu_s, gu_g), (dn_c, dn_s, dn_g), outs[i], hs[i],
                  activation=activation, shared=sh, shared_gate_logit=logits[i], warps_gu=warps_gu, warps_dn=warps_dn)

    # torch: the same math on pre-gathered bf16 expert weights (the gather itself not timed)
    wgu = nvfp4_dequant(gc[: topk * 2 * inter], gs_[: topk * 2 * inter], 1.0).bfloat16().view(topk, 2 * inter, hdim)
    wdn = nvfp4_dequant(dc[: topk * hdim], ds_[: topk * hdim], 1.0).bfloat16().view(topk, hdim, inter)

    def trun(i):
        xb = xs[i].expand(topk, m, hdim)
        gu = torch.bmm(xb, wgu.transpose(1, 2))
        hh = torch.nn.functional.silu(gu[..., :inter]) * gu[..., inter:]
        y = torch.bmm(hh, wdn.transpose(1, 2))
        outs[i].copy_((y * wts[i].t().unsqueeze(-1)).sum(0))

    def check():
        run(0)
        ref = torch.zeros(m, hdim, device=DEV)
        gcv, gsv = gc.view(e, 2 * inter, -1), gs_.view(e, 2 * inter, -1)
        dcv, dsv = dc.view(e, hdim, -1), ds_.view(e, hdim, -1)
        act = torch.nn.functional.silu if activation == SILU else (
            lambda v: torch.nn.functional.gelu(v, approximate="tanh"))
        for mi in range(m):
            xm = xs[0][mi].float()
            for j in range(slots):
                if j < topk:
                    ei = int(ids[0][mi, j])
                    wg = nvfp4_dequant(gcv[ei], gsv[ei], 1.0)
                    wd = nvfp4_dequant(dcv[ei], dsv[ei], 1.0)
                    g2, d2, coef = gu_g[ei], dn_g[ei], wts[0][mi, j]
                else:
                    wg, wd = nvfp4_dequant(sgc, sgs, 1.0), nvfp4_dequant(sdc, sds, 1.0)
                    g2, d2, coef = sh[2][0], sh[5][0], torch.sigmoid(logits[0][mi])
                gu = wg @ xm
                hv = act(gu[:inter] * g2[0]) * (gu[inter:] * g2[1])
                ref[mi] += coef * d2 * (wd @ hv)
        return rel(outs[0], ref)

    act_name = "silu" if activation == SILU else "gelu-tanh"
    note = f"E={e} top-{topk}" + (" +shared(fused)" if shared else "") + f" {act_name}"
    kname = "moe-nvfp4" + (f"-gu{warps_gu}" if warps_gu else "") + (f"-dn{warps_dn}" if warps_dn else "")
    return Case(kname, f"{name} gu {2 * inter}x{hdim} dn {hdim}x{inter}", m, nsets, moved, run, check,
                trun, "2x torch.bmm bf16 on pre-gathered experts", note)


ALL_ACTS = (SILU, GELU_TANH)
