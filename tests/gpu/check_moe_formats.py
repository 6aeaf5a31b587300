"""GPU check + timing of the MoE decode kernels moe_bf16 / moe_fp8 / moe_gguf at the real shapes.

Run on a CUDA machine (not under pytest, not under the simulator), from the repo root with
``imp_kernels`` importable::

    python tests/gpu/check_moe_formats.py [--out DIR] [--quick] [--only bf16,fp8,gguf] [--no-time]

For each case: fresh random weights (the whole expert stack), x, top-k ids/weights, residual; the
kernel vs its torch reference (``*_ref``, fp32 math on the dequantised weights) -> max relative
error (max |out - ref| / max |ref|) and the h scratch's error; then timing: one CUDA graph of 200
launches rotating over 16 distinct top-k id sets (so the active experts are not L2-resident), CUDA
events around each replay, median us per call, and GB/s from the bytes of the distinct active
experts (+ shared) per call. A pass/fail table is printed; ``--out DIR`` also writes
``DIR/moe_formats.json``. Every case runs in its own try block: one failure does not stop the rest.
Exit status 1 if any case failed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

TOL_F32 = 1e-4  # fp32 out: both sides accumulate in fp32, in different orders
TOL_BF16 = 8e-3  # bf16 out: one bf16 rounding (max-abs measure)
CALLS = 200
ID_SETS = 16

QWEN = dict(name="qwen3.6-35b-a3b", hdim=2048, inter=512, e=256, k=8, sh_inter=512, act=0)
GEMMA = dict(name="gemma4-26b-a4b", hdim=2816, inter=704, e=128, k=8, sh_inter=None, act=1)

rows: list[dict] = []


def _max_rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    o, r = out.double(), ref.double()
    if not torch.isfinite(o).all():
        return float("inf")
    return float((o - r).abs().max() / r.abs().max().clamp_min(1e-30))


def _ids_sets(m, k, e, n, gen, dtype):
    return [torch.stack([torch.randperm(e, generator=gen)[:k] for _ in range(m)]).to(dtype).cuda()
            for _ in range(n)]


def _time_graph(fn, ids_sets, wts):
    """Median us per call of ``fn(ids)`` over a graph of CALLS launches rotating the id sets."""
    fn(ids_sets[0])
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(3):
            fn(ids_sets[i % len(ids_sets)])
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(CALLS):
            fn(ids_sets[i % len(ids_sets)])
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1000.0 / CALLS)
    del graph
    return statistics.median(times)


def _active_bytes(ids_sets, m, per_expert_bytes, shared_bytes):
    per = [len(set(s[:m].reshape(-1).tolist())) for s in ids_sets]
    return statistics.mean(per) * per_expert_bytes + shared_bytes


def run_case(fmt, label, m, shape, make, fn, ref, *, out_dtype=torch.float32, residual=True, logit=True,
             ids_dtype=torch.int32, time_it=True):
    """make() -> (weights_args, kwargs_extra, per_expert_bytes, shared_bytes)."""
    t0 = time.time()
    gen = torch.Generator().manual_seed(hash((fmt, label, m)) & 0xFFFF)
    hdim, e, k = shape["hdim"], shape["e"], shape["k"]
    wargs, extra, per_b, sh_b, scratch = make(gen)
    x = torch.randn(m, hdim, generator=gen).bfloat16().cuda()
    ids_sets = _ids_sets(m, k, e, ID_SETS, gen, ids_dtype)
    wts = torch.rand(m, k, generator=gen).cuda()
    wts = wts / wts.sum(-1, keepdim=True)
    kw = dict(extra)
    kw["activation"] = shape["act"]
    if kw.get("shared") is not None and logit:
        kw["shared_gate_logit"] = torch.randn(m, generator=gen).cuda()
    if residual:
        kw["residual"] = torch.randn(m, hdim, generator=gen).bfloat16().cuda()
    out = torch.full((m, hdim), float("nan"), dtype=out_dtype, device="cuda")
    h = torch.full(scratch, float("nan"), device="cuda")
    fn(x, ids_sets[0], wts, *wargs, out, h, **kw)
    torch.cuda.synchronize()
    out_r = torch.full_like(out, float("nan"))
    h_r = torch.full_like(h, float("nan"))
    ref(x, ids_sets[0], wts, *wargs, out_r, h_r, **kw)
    torch.cuda.synchronize()
    err = _max_rel(out, out_r)
    herr = _max_rel(torch.nan_to_num(h, nan=0.0), h_r)
    tol = TOL_F32 if out_dtype == torch.float32 else TOL_BF16
    ok = err < tol and herr < TOL_F32
    us = gbs = float("nan")
    graph_ok = True
    if time_it:
        us = _time_graph(lambda ids: fn(x, ids, wts, *wargs, out, h, **kw), ids_sets, wts)
        # the graph's last call used ids_sets[(CALLS - 1) % ID_SETS]: it must match eager
        last = ids_sets[(CALLS - 1) % ID_SETS]
        ref(x, last, wts, *wargs, out_r, h_r, **kw)
        graph_ok = _max_rel(out, out_r) < tol
        ok = ok and graph_ok
        nbytes = _active_bytes(ids_sets, m, per_b, sh_b)
        gbs = nbytes / (us * 1e-6) / 1e9
    row = dict(format=fmt, case=label, model=shape["name"], m=m, out=str(out_dtype).replace("torch.", ""),
               ids=str(ids_dtype).replace("torch.", ""), shared=kw.get("shared") is not None,
               residual=residual, max_rel_err=err, h_max_rel_err=herr, tol=tol, graph_matches=graph_ok,
               us=us, gbs=gbs, ok=bool(ok), secs=round(time.time() - t0, 1))
    rows.append(row)
    print(f"{'PASS' if ok else 'FAIL'} {fmt:5s} {label:34s} M={m} err {err:.2e} h {herr:.2e} "
          f"{us:8.1f} us {gbs:7.0f} GB/s", flush=True)


# ------------------------------------------------------------------------------ weight makers
def make_bf16(shape, shared):
    from imp_kernels.moe_bf16 import moe_bf16_scratch_shape

    def make(gen):
        e, i, hd = shape["e"], shape["inter"], shape["hdim"]
        gu = (torch.randn(e, 2 * i, hd, device="cuda") * 0.05).bfloat16()
        dn = (torch.randn(e, hd, i, device="cuda") * 0.05).bfloat16()
        extra = {}
        sh_b = 0
        si = shape["sh_inter"] if shared else None
        if shared:
            extra["shared"] = ((torch.randn(1, 2 * si, hd, device="cuda") * 0.05).bfloat16(),
                               (torch.randn(1, hd, si, device="cuda") * 0.05).bfloat16())
            sh_b = 3 * si * hd * 2
        return (gu, dn), extra, 3 * i * hd * 2, sh_b, moe_bf16_scratch_shape(1, 1, 1, None)
    return make


def _fp8_codes(e, n, k):
    from imp_kernels.moe_fp8 import fp8_experts_tile

    w = (torch.randn(e, n, k, device="cuda") * 0.5).to(torch.float8_e4m3fn)
    return fp8_experts_tile(w)


def _fp8_scale(gran, e, n, k, inter=None):
    if gran == "tensor":  # gate_up: [E, 2] (gate, up); down: [E]
        return torch.rand(e, 2, device="cuda") * 0.02 + 0.01 if inter else torch.rand(e, device="cuda") * 0.02 + 0.01
    if gran == "channel":
        return torch.rand(e, n, device="cuda") * 0.02 + 0.01
    return torch.rand(e, -(-n // 128), -(-k // 128), device="cuda") * 0.02 + 0.01


def make_fp8(shape, shared, gran):
    def make(gen):
        e, i, hd = shape["e"], shape["inter"], shape["hdim"]
        gate_up = (_fp8_codes(e, 2 * i, hd), _fp8_scale(gran, e, 2 * i, hd, i))
        down = (_fp8_codes(e, hd, i), _fp8_scale(gran, e, hd, i))
        extra = {}
        sh_b = 0
        if shared:
            si = shape["sh_inter"]
            extra["shared"] = (_fp8_codes(1, 2 * si, hd), _fp8_scale(gran, 1, 2 * si, hd, si),
                               _fp8_codes(1, hd, si), _fp8_scale(gran, 1, hd, si))
            sh_b = 3 * si * hd
        return (gate_up, down), extra, 3 * i * hd, sh_b, None
    return make


def _gguf_rand(rows, cols, qt, device="cuda"):
    """Random GGUF blocks with sane f16 scale fields (no NaN/Inf), as a gguf_device_buffer."""
    from imp_kernels.gguf_common import gguf_device_buffer
    from imp_kernels.repack import GGUF_BLOCKS

    elems, nb = GGUF_BLOCKS[qt]
    nblk = rows * (cols // elems)
    b = torch.randint(0, 256, (nblk, nb), dtype=torch.uint8, device=device)

    def f16_field(off, scale):
        v = (torch.rand(nblk, device=device) * scale + scale * 0.1).half()
        b[:, off:off + 2] = v.view(torch.uint8).reshape(nblk, 2)

    if qt == "Q8_0":
        f16_field(0, 0.002)
    elif qt == "Q4_K":
        f16_field(0, 0.002)
        f16_field(2, 0.002)
    else:
        f16_field(208, 0.0005)
    return gguf_device_buffer(b.reshape(-1)), nblk * nb


def make_gguf(shape, shared, gq, uq, dq, sq=("Q8_0", "Q8_0", "Q8_0")):
    def make(gen):
        e, i, hd = shape["e"], shape["inter"], shape["hdim"]
        (g, gb), (u, ub), (d, db) = _gguf_rand(e * i, hd, gq), _gguf_rand(e * i, hd, uq), _gguf_rand(e * hd, i, dq)
        extra = {"n_experts": e, "inter": i}
        sh_b = 0
        if shared:
            si = shape["sh_inter"]
            (sg, sgb), (su, sub), (sd, sdb) = _gguf_rand(si, hd, sq[0]), _gguf_rand(si, hd, sq[1]), _gguf_rand(hd, si, sq[2])
            extra["shared"] = ((sg, sq[0]), (su, sq[1]), (sd, sq[2]))
            extra["shared_inter"] = si
            sh_b = sgb + sub + sdb
        return ((g, gq), (u, uq), (d, dq)), extra, (gb + ub + db) // e, sh_b, None
    return make


def _scratch(shape, m, shared):
    from imp_kernels.moe_bf16 import moe_bf16_scratch_shape

    return moe_bf16_scratch_shape(m, shape["k"], shape["inter"], shape["sh_inter"] if shared else None)


def _with_scratch(make, shape, m, shared):
    def mk(gen):
        wargs, extra, per_b, sh_b, _ = make(gen)
        return wargs, extra, per_b, sh_b, _scratch(shape, m, shared)
    return mk


def cases(quick: bool):
    from imp_kernels.moe_bf16 import moe_bf16, moe_bf16_ref
    from imp_kernels.moe_fp8 import moe_fp8, moe_fp8_ref
    from imp_kernels.moe_gguf import moe_gguf, moe_gguf_ref

    out = []
    # (fmt, label, m, shape, maker(shared), fn, ref, shared, kwargs)
    for m in ((1,) if quick else (1, 4)):
        out.append(("bf16", "qwen +shared", m, QWEN, lambda s: make_bf16(QWEN, s), moe_bf16, moe_bf16_ref, True, {}))
    out.append(("bf16", "gemma", 1, GEMMA, lambda s: make_bf16(GEMMA, s), moe_bf16, moe_bf16_ref, False, {}))
    out.append(("bf16", "gemma bf16-out int64", 2, GEMMA, lambda s: make_bf16(GEMMA, s), moe_bf16, moe_bf16_ref,
                False, {"out_dtype": torch.bfloat16, "ids_dtype": torch.int64}))
    for gran in ("block", "tensor", "channel"):
        out.append(("fp8", f"qwen +shared {gran}", 1, QWEN, lambda s, g=gran: make_fp8(QWEN, s, g), moe_fp8,
                    moe_fp8_ref, True, {}))
    if not quick:
        out.append(("fp8", "qwen +shared block", 4, QWEN, lambda s: make_fp8(QWEN, s, "block"), moe_fp8,
                    moe_fp8_ref, True, {}))
    out.append(("fp8", "gemma block bf16-out", 1, GEMMA, lambda s: make_fp8(GEMMA, s, "block"), moe_fp8,
                moe_fp8_ref, False, {"out_dtype": torch.bfloat16}))
    out.append(("fp8", "gemma channel", 2, GEMMA, lambda s: make_fp8(GEMMA, s, "channel"), moe_fp8,
                moe_fp8_ref, False, {"ids_dtype": torch.int64}))
    out.append(("gguf", "qwen Q4_K/Q4_K/Q6_K +shared Q8_0", 1, QWEN,
                lambda s: make_gguf(QWEN, s, "Q4_K", "Q4_K", "Q6_K"), moe_gguf, moe_gguf_ref, True, {}))
    if not quick:
        out.append(("gguf", "qwen Q4_K/Q4_K/Q6_K +shared Q8_0", 4, QWEN,
                    lambda s: make_gguf(QWEN, s, "Q4_K", "Q4_K", "Q6_K"), moe_gguf, moe_gguf_ref, True, {}))
    out.append(("gguf", "qwen Q8_0 all +shared Q6_K/Q4_K/Q4_K", 1, QWEN,
                lambda s: make_gguf(QWEN, s, "Q8_0", "Q8_0", "Q8_0", ("Q6_K", "Q4_K", "Q4_K")), moe_gguf,
                moe_gguf_ref, True, {}))
    out.append(("gguf", "gemma Q4_K/Q6_K/Q8_0", 1, GEMMA, lambda s: make_gguf(GEMMA, s, "Q4_K", "Q6_K", "Q8_0"),
                moe_gguf, moe_gguf_ref, False, {}))
    out.append(("gguf", "gemma Q8_0 bf16-out", 2, GEMMA, lambda s: make_gguf(GEMMA, s, "Q8_0", "Q8_0", "Q8_0"),
                moe_gguf, moe_gguf_ref, False, {"out_dtype": torch.bfloat16, "ids_dtype": torch.int64}))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="folder for moe_formats.json")
    ap.add_argument("--quick", action="store_true", help="fewer cases")
    ap.add_argument("--no-time", action="store_true", help="correctness only")
    ap.add_argument("--only", default=None, help="comma-separated formats to run (bf16,fp8,gguf)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("CUDA is not available: this check needs a GPU", file=sys.stderr)
        return 2
    from imp_kernels.compat import SIMULATOR

    if SIMULATOR:
        print("NUMBA_ENABLE_CUDASIM is set: unset it to run on the GPU", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    t0 = time.time()
    print(f"device: {torch.cuda.get_device_name()}", flush=True)
    only = set(args.only.split(",")) if args.only else {"bf16", "fp8", "gguf"}
    for mod in (f"moe_{f}" for f in ("bf16", "fp8", "gguf") if f in only):
        t1 = time.time()
        try:
            __import__(f"imp_kernels.{mod}", fromlist=["warmup"]).warmup("cuda")
            print(f"warmup {mod}: {time.time() - t1:.1f} s", flush=True)
        except Exception as exc:
            rows.append(dict(format=mod, case="warmup", ok=False, error=f"{type(exc).__name__}: {exc}"[:300]))
            traceback.print_exc()
    for fmt, label, m, shape, maker, fn, ref, shared, kw in cases(args.quick):
        if fmt not in only:
            continue
        try:
            make = _with_scratch(maker(shared), shape, m, shared)
            run_case(fmt, label, m, shape, make, fn, ref, time_it=not args.no_time, **kw)
        except Exception as exc:
            rows.append(dict(format=fmt, case=label, m=m, ok=False, error=f"{type(exc).__name__}: {exc}"[:300]))
            print(f"FAIL {fmt:5s} {label:34s} M={m} {type(exc).__name__}: {exc}", flush=True)
            traceback.print_exc()
        torch.cuda.empty_cache()
    print("\n| result | format | case | M | out | max rel err | h err | us | GB/s |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| FAIL | {r['format']} | {r['case']} | {r.get('m', '')} | | {r['error'][:80]} | | | |")
            continue
        print(f"| {'pass' if r['ok'] else 'FAIL'} | {r['format']} | {r['case']} | {r['m']} | {r['out']} | "
              f"{r['max_rel_err']:.2e} | {r['h_max_rel_err']:.2e} | {r['us']:.1f} | {r['gbs']:.0f} |")
    nfail = sum(not r["ok"] for r in rows)
    print(f"\n{len(rows) - nfail} passed, {nfail} failed in {time.time() - t0:.0f} s")
    if args.out:
        d = Path(args.out)
        d.mkdir(parents=True, exist_ok=True)
        clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]
        (d / "moe_formats.json").write_text(json.dumps(dict(device=torch.cuda.get_device_name(), calls=CALLS,
                                                            id_sets=ID_SETS, rows=clean), indent=1))
    return 1 if nfail else 0


if __name__ == "__main__":
    sys.exit(main())
