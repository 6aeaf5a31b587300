"""Kernel-vs-reference cases of the decode ops at the real model shapes (or tiny ones), shared
by ``tests/gpu/check_kernels_ops.py`` (correctness table) and ``imp_kernels.bench.ops`` (timing).

A ``Case`` builds fresh random inputs (``build(seed) -> kwargs``; never zeros), runs the kernel
(``fn(**kw)``) and its torch reference (``ref(**kw)``, same arguments) and compares what they
wrote (``compare(kw_kernel, kw_ref) -> (ok, detail)``); ``poison`` names the pure outputs that
are filled with NaN (or -1) before the kernel runs, ``nbytes`` the bytes one call must move.
``all_cases(device, tiny)`` lists them: Qwen3.6 / Gemma-4 / Mistral-Small shapes, contexts
512 / 4096 / 32768, vocabularies 248320 / 262144. The references are the kernel modules' own
torch code; comparisons with the engine's layers are added by the GPU check script.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from imp_kernels import attn_decode as ad
from imp_kernels import gdn_decode as gd
from imp_kernels import rmsnorm as rn
from imp_kernels import rope as rp
from imp_kernels import router as rt
from imp_kernels import sample as sm
from imp_kernels.rng import seed_row_keys

__all__ = ["Case", "all_cases", "run_check", "clone_kw", "rel_err", "max_ulps"]


@dataclass
class Case:
    kernel: str
    shape: str
    build: Callable[[int], dict]
    fn: Callable[..., None]
    ref: Callable[..., None]
    compare: Callable[[dict, dict], tuple[bool, str]]
    nbytes: int
    poison: tuple[str, ...] = ()
    m: int = 1
    torch_fn: Callable[..., None] | None = None
    torch_what: str = ""
    extra: dict = field(default_factory=dict)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    o, r = out.double(), ref.double()
    if not torch.isfinite(o).all():
        return math.inf
    return float((o - r).norm() / r.norm().clamp_min(1e-30))


def max_ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance in bf16 units in the last place (bit patterns as integers)."""
    if a.dtype != torch.bfloat16:
        raise TypeError("max_ulps compares bf16 tensors")
    if not torch.isfinite(a.float()).all():
        return 1 << 30
    return int((a.view(torch.int16).int() - b.view(torch.int16).int()).abs().max())


def clone_kw(kw: dict) -> dict:
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


def _poison(kw: dict, names: tuple[str, ...]) -> None:
    for n in names:
        t = kw[n]
        t.fill_(-1 if not t.is_floating_point() else float("nan"))


def run_check(case: Case, seed: int = 0) -> tuple[bool, str]:
    """Build one input set, run kernel and reference on copies, compare."""
    kw = case.build(seed)
    kw_ref = clone_kw(kw)
    _poison(kw, case.poison)
    case.fn(**kw)
    case.ref(**kw_ref)
    if any(isinstance(v, torch.Tensor) and v.is_cuda for v in kw.values()):
        torch.cuda.synchronize()
    return case.compare(kw, kw_ref)


def _gen(seed: int, device) -> Callable[..., torch.Tensor]:
    """Seeded normal tensors made directly on ``device`` (CPU generator for the simulator)."""
    dev = torch.device(device)
    g = torch.Generator(device=dev).manual_seed(seed)

    def randn(*shape, scale=1.0, dtype=torch.bfloat16):
        return (torch.randn(*shape, generator=g, device=dev) * scale).to(dtype)

    return randn


# ------------------------------------------------------------------------------- RMSNorm
def _norm_cases(device, tiny) -> list[Case]:
    out = []
    # fuse: "residual" (residual += x, then norm), "post" (resid = (resid + norm(x)) * scale, Gemma's
    # feed-forward end), "pair" (two weights, two outputs: Gemma's pre-feed-forward norms)
    specs = [("qwen hidden 2048, (1+w), +residual", 1, 2048, "fp32", 1.0, "residual", 1e-6),
             ("qwen hidden 2048, (1+w), +residual", 8, 2048, "fp32", 1.0, "residual", 1e-6),
             ("gemma hidden 2816, w", 1, 2816, "fp32", 0.0, None, 1e-6),
             ("mistral hidden 5120, llama, +residual", 1, 5120, "llama", 0.0, "residual", 1e-5),
             ("gemma hidden 2816, w, post-norm add x layer_scalar", 1, 2816, "fp32", 0.0, "post", 1e-6),
             ("gemma hidden 2816, w and w2, two outputs", 1, 2816, "fp32", 0.0, "pair", 1e-6),
             ("per-head q-norm 16x256, (1+w)", 16, 256, "fp32", 1.0, None, 1e-6)]
    if tiny:
        specs = [(s, m, n // 8, mode, off, fuse, eps) for s, m, n, mode, off, fuse, eps in specs[:6]]
    for name, m, n, mode, off, fuse, eps in specs:
        def build(seed, m=m, n=n, fuse=fuse):
            r = _gen(seed, device)
            kw = dict(x=r(m, n, scale=2.0), weight=r(n, scale=0.3), out=r(m, n),
                      residual=r(m, n) if fuse == "residual" else None)
            if fuse == "post":
                kw.update(add=r(m, n), scale=r(1, scale=0.5))
            if fuse == "pair":
                kw.update(weight2=r(n, scale=0.3), out2=r(m, n))
            return kw

        def compare(a, b, fuse=fuse):
            if fuse == "post":  # one ulp of the norm can be more of a cancelling sum: relative error
                e = rel_err(a["out"], b["out"])
                return e < 2.0 ** -8, f"rel err {e:.1e} vs torch rms_norm + add + mul"
            u = max(max_ulps(a[k], b[k]) for k in ("out", "out2") if a.get(k) is not None)
            ok = u <= 1 and (a["residual"] is None or torch.equal(a["residual"], b["residual"]))
            return ok, f"max {u} bf16 ulp vs torch rms_norm"

        kwargs = dict(eps=eps, mode=mode, offset=off)
        rows_rw = {"residual": 4, "post": 3, "pair": 3}.get(fuse, 2)  # [m, n] tensors read or written
        nb = (rows_rw * m * n + n * (2 if fuse == "pair" else 1)) * 2
        poison = ("out", "out2") if fuse == "pair" else ("out",)
        out.append(Case("rmsnorm", name, build, lambda kwargs=kwargs, **kw: rn.rmsnorm(**kw, **kwargs),
                        lambda kwargs=kwargs, **kw: rn.rmsnorm_ref(**kw, **kwargs), compare, nb, poison, m=m,
                        torch_what="torch rms_norm (+add, x scale)", extra={"kwargs": kwargs}))
    return out


# ------------------------------------------------------------------------------- RoPE + cache
def _inv_freq(theta: float, dim: int, rotated_pairs: int | None = None) -> torch.Tensor:
    """theta^(-2i / dim) for i < dim / 2 (fp32); with ``rotated_pairs``, 0 from that pair on
    (Gemma's proportional RoPE: the whole head as denominator, only the first pairs rotate)."""
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if rotated_pairs is not None:
        inv[rotated_pairs:] = 0.0
    return inv


def _rope_cases(device, tiny) -> list[Case]:
    # name, H, Hkv, D, inv_freq, cap, ring, pos, norm?, offset, v_mode, table
    specs = [("qwen full 16/2x256, rot 64, q/k (1+w) norm, cap 4096", 16, 2, 256, _inv_freq(1e7, 64), 4096,
              False, 4000, True, 1.0, "copy", False),
             ("gemma sliding 16/8x256, ring 1024, norms + v_norm", 16, 8, 256, _inv_freq(1e4, 256), 1024,
              True, 5000, True, 0.0, "norm", False),
             ("gemma global 16/2x512, proportional, K=V, cap 4096", 16, 2, 512, _inv_freq(1e6, 512, 64),
              4096, False, 3000, True, 0.0, "from_k", False),
             ("mistral 32/8x128, theta 1e9, cap 32768, cos/sin table", 32, 8, 128, _inv_freq(1e9, 128), 32768,
              False, 30000, False, 0.0, "copy", True)]
    if tiny:
        specs = [(s, h // 4, max(1, hkv // 4), d // 2, inv[: inv.numel() // 2], cap // 64, ring, pos // 64, nrm, off,
                  vm, tb) for s, h, hkv, d, inv, cap, ring, pos, nrm, off, vm, tb in specs]
    out = []
    for name, h, hkv, d, inv, cap, ring, pos, nrm, off, vm, table in specs:
        inv_dev = inv.to(device)
        tabs = None
        if table:
            cos, sin = rp.rope_cos_sin(inv_dev, torch.arange(cap, device=device), torch.bfloat16)
            tabs = (cos.contiguous(), sin.contiguous())

        big: dict = {}  # the caches are built once and shared by every input set (one slot is written)

        def build(seed, h=h, hkv=hkv, d=d, cap=cap, pos=pos, vm=vm, nrm=nrm, big=big):
            r = _gen(seed, device)
            if not big:
                sp = torch.arange(cap, dtype=torch.int64, device=device)
                sp[min(pos, cap - 1):] = -1
                big.update(k_cache=r(1, hkv, cap, d), v_cache=r(1, hkv, cap, d), slot_pos=sp)
            return dict(q=r(1, h, d, scale=2.0), k=r(1, hkv, d, scale=2.0), v=None if vm == "from_k" else r(1, hkv, d),
                        pos=torch.tensor([pos], device=device), q_norm=r(d, scale=0.3) if nrm else None,
                        k_norm=r(d, scale=0.3) if nrm else None, **big)

        def compare(a, b):
            worst, frac = 0, 0.0
            for n in ("q", "k", "v", "k_cache", "v_cache"):
                if a[n] is None:
                    continue
                worst = max(worst, max_ulps(a[n], b[n]))
                frac = max(frac, float((a[n] != b[n]).float().mean()))
            ok = worst <= 1 and torch.equal(a["slot_pos"], b["slot_pos"])
            return ok, f"max {worst} bf16 ulp vs torch rope ({100 * frac:.3f}% of elements differ)"

        kwargs = dict(ring=ring, norm_mode="fp32", norm_offset=off, eps=1e-6, v_mode=vm)
        if tabs is None:
            kwargs["inv_freq"] = inv_dev
        else:
            kwargs["cos_table"], kwargs["sin_table"] = tabs
        nb = ((2 * h + 4 * hkv) * d + 2 * hkv * d) * 2
        out.append(Case("rope_cache", name, build, lambda kwargs=kwargs, **kw: rp.rope_cache(**kw, **kwargs),
                        lambda kwargs=kwargs, **kw: rp.rope_cache_ref(**kw, **kwargs), compare, nb,
                        torch_what="torch norm + rotate-half + index_copy_", extra={"kwargs": kwargs}))
    return out


# ------------------------------------------------------------------------------- attention
def _attn_cases(device, tiny) -> list[Case]:
    fams = [("qwen full 16/2x256 gated", 16, 2, 256, 1 / 16, None, True, (512, 4096, 32768)),
            ("gemma sliding 16/8x256 w1024 ring", 16, 8, 256, 1.0, 1024, False, (4096,)),
            ("gemma global 16/2x512", 16, 2, 512, 1.0, None, False, (512, 4096, 32768)),
            ("mistral 32/8x128", 32, 8, 128, 128 ** -0.5, None, False, (512, 4096, 32768))]
    if tiny:
        fams = [(n, h // 4, max(1, hkv // 4), d // 2 if d > 128 else d, sc, w // 64 if w else None, g,
                 (48, 160)[: 1 if w else 2]) for n, h, hkv, d, sc, w, g, ctxs in fams]
    out = []
    for name, h, hkv, d, scale, window, gated, ctxs in fams:
        for ctx in ctxs:
            ring = window is not None
            cap = window if ring else ctx
            plan = ad.attn_decode_plan(1, hkv, d, cap, device)

            def build(seed, h=h, hkv=hkv, d=d, cap=cap, ctx=ctx, ring=ring, gated=gated):
                r = _gen(seed, device)
                pos = ctx - 1
                if ring:
                    sp = torch.arange(pos - cap + 1, pos + 1, dtype=torch.int64)
                    sp = sp[torch.argsort(sp % cap)]  # slot s holds the position p with p % cap == s
                else:
                    sp = torch.arange(cap, dtype=torch.int64)
                cur = pos % cap if ring else pos
                others = torch.tensor([s for s in range(cap) if s != cur])
                holes = others[torch.randperm(others.numel(), generator=torch.Generator().manual_seed(seed))[:3]]
                sp[holes] = -1  # a few empty slots; the current token's slot stays
                return dict(q=r(1, h, d, scale=d ** -0.25 if scale == 1.0 else 1.0), k_cache=r(1, hkv, cap, d),
                            v_cache=r(1, hkv, cap, d), slot_pos=sp.to(device), pos=torch.tensor([pos], device=device),
                            out=r(1, h, d), gate=r(1, h * d) if gated else None)

            def compare(a, b, scale=scale, window=window, plan=plan):
                o32 = ad.attention_torch(a["q"].float(), a["k_cache"].float(), a["v_cache"].float(), a["slot_pos"],
                                         a["pos"], scale=scale, window=window)
                if a["gate"] is not None:
                    o32 = o32 * torch.sigmoid(a["gate"].float().view(o32.shape))
                e_k, e_r = rel_err(a["out"], o32), rel_err(b["out"], o32)
                return e_k < 1e-2, (f"rel err {e_k:.1e} vs fp32 attention (eager bf16 reference: {e_r:.1e}), "
                                    f"splits {plan.splits}")

            kwargs = dict(scale=scale, window=window, ring=ring, plan=plan)
            live = cap
            nb = 2 * hkv * live * d * 2 + 8 * live + 2 * h * d * 2 + (h * d * 2 if gated else 0)

            def sdpa(kwargs=kwargs, **kw):
                o = ad.attention_torch(kw["q"], kw["k_cache"], kw["v_cache"], kw["slot_pos"], kw["pos"],
                                       scale=kwargs["scale"], window=kwargs["window"], sdpa=True)
                if kw["gate"] is not None:
                    o = o * torch.sigmoid(kw["gate"].view(o.shape))
                kw["out"].copy_(o)

            out.append(Case("attn_decode", f"{name} ctx {ctx}", build,
                            lambda kwargs=kwargs, **kw: ad.attn_decode(**kw, **kwargs),
                            lambda kwargs=kwargs, **kw: ad.attn_decode_ref(**kw, **kwargs), compare, nb, ("out",),
                            torch_fn=sdpa, torch_what="torch sdpa + gate",
                            extra={"splits": plan.splits, "ctx": ctx, "hkv": hkv, "d": d, "cap": cap,
                                   "kwargs": kwargs}))
    return out


# ------------------------------------------------------------------------------- Gated DeltaNet
def _gdn_cases(device, tiny) -> list[Case]:
    hk, hv, dv, kconv, kc = (16, 32, 128, 4, 3) if not tiny else (1, 2, 64, 4, 3)
    ws = gd.gdn_decode_workspace(1, hk, device)
    c = 2 * hk * gd.DK + hv * dv

    def build(seed):
        r = _gen(seed, device)
        return dict(mixed=r(1, c, scale=2.0), conv_state=r(1, c, kc, scale=2.0), conv_w=r(c, kconv, scale=0.5),
                    a=r(1, hv), b=r(1, hv), a_log=r(hv, scale=0.5, dtype=torch.float32),
                    dt_bias=r(hv, scale=0.5).float(), z=r(1, hv * dv), norm_w=r(dv, scale=0.2) + 1.0,
                    state=r(1, hv, gd.DK, dv, scale=0.3, dtype=torch.float32), out=r(1, hv * dv))

    def compare(a, b):
        es, eo = rel_err(a["state"], b["state"]), rel_err(a["out"], b["out"])
        ok = es < 1e-4 and eo < 1e-2 and torch.equal(a["conv_state"], b["conv_state"])
        return ok, f"state rel err {es:.1e}, out rel err {eo:.1e}"

    state_bytes = hv * gd.DK * dv * 4
    nb = 2 * state_bytes + 2 * c * kc * 2 + c * kconv * 2 + c * 2 + 2 * hv * dv * 2
    kwargs = dict(eps=1e-6, n_k_heads=hk, workspace=ws)
    shape = f"qwen3.6 Hk{hk}/Hv{hv} dk{gd.DK} dv{dv} conv{kconv}"
    return [Case("gdn_decode", shape, build, lambda **kw: gd.gdn_decode(**kw, **kwargs),
                 lambda **kw: gd.gdn_decode_ref(**kw, **kwargs), compare, nb, ("out",),
                 torch_what="module's torch reference step",
                 extra={"state_bytes_rw": 2 * state_bytes, "kwargs": kwargs})]


# ------------------------------------------------------------------------------- routers
def _router_cases(device, tiny) -> list[Case]:
    # (name, M, E, H, k, gemma, extra rows): the last is Qwen's decode call, with the shared-expert
    # gate row and fp32 weights rounded to bf16
    specs = [("qwen 256x2048 top-8", 1, 256, 2048, 8, False, 0), ("qwen 256x2048 top-8", 8, 256, 2048, 8, False, 0),
             ("gemma 128x2816 top-8", 1, 128, 2816, 8, True, 0),
             ("qwen 256x2048 top-8 + shared gate, rounded w", 1, 256, 2048, 8, False, 1)]
    if tiny:
        specs = [(n, m, e // 8, h // 16, k // 2, gm, r) for n, m, e, h, k, gm, r in specs]
    out = []
    for name, m, e, h, k, gemma, n_extra in specs:
        ws = rt.router_workspace(e, device)

        def build(seed, m=m, e=e, h=h, k=k, gemma=gemma, n_extra=n_extra):
            r = _gen(seed, device)
            kw = dict(x=r(m, h, scale=2.0), weight=r(e, h, scale=3 * h ** -0.5),
                      ids=torch.zeros(m, k, dtype=torch.int64 if gemma else torch.int32, device=device),
                      weights=r(m, k, dtype=torch.float32) if gemma or n_extra else r(m, k),
                      norm_scale=(r(h, scale=0.2) + 1.0) if gemma else None,
                      per_expert_scale=(r(e, scale=0.2) + 1.0) if gemma else None)
            if n_extra:
                kw.update(extra_weight=r(n_extra, h, scale=h ** -0.5), extra_out=r(m, n_extra, dtype=torch.float32))
            return kw

        def compare(a, b, rnd=n_extra > 0):
            # ids as sets (torch.topk may order exact ties differently); weights to fp32/bf16 rounding;
            # the extra rows to one bf16 ulp (fp32 summation order)
            same = torch.equal(a["ids"].sort(-1).values.long(), b["ids"].sort(-1).values.long())
            wa, wb = a["weights"].double().sort(-1).values, b["weights"].double().sort(-1).values
            tol = 1e-5 if a["weights"].dtype == torch.float32 and not rnd else 8e-3
            close = bool(torch.allclose(wa, wb, rtol=tol, atol=0))
            worst = float(((wa - wb).abs() / wb.abs()).max())
            detail = f"ids {'equal' if same else 'DIFFER'}, weights max rel {worst:.1e}"
            if "extra_out" in a:
                xa, xb = a["extra_out"].double(), b["extra_out"].double()
                close = close and bool(torch.allclose(xa, xb, rtol=2 ** -7, atol=1e-30))
                detail += f", extra rows max rel {float(((xa - xb).abs() / xb.abs().clamp_min(1e-30)).max()):.1e}"
            return same and close, detail

        kwargs = dict(top_k=k, workspace=ws, round_weights_bf16=n_extra > 0)
        what = "torch router (linear + softmax + topk)" + (" + shared-gate linear" if n_extra else "")
        out.append(Case("router", name, build, lambda kwargs=kwargs, **kw: rt.route(**kw, **kwargs),
                        lambda kwargs=kwargs, **kw: rt.route_ref(**kw, **kwargs), compare,
                        (e + n_extra) * h * 2 + m * h * 2 + (2 * h if gemma else 0),
                        ("weights", "ids") + (("extra_out",) if n_extra else ()), m=m,
                        torch_what=what, extra={"kwargs": kwargs}))
    return out


# ------------------------------------------------------------------------------- sampling
def _sample_cases(device, tiny) -> list[Case]:
    S = sm.SampleSettings
    specs = [("greedy V=262144 fp32", 262144, torch.float32, S(temperature=0.0), 1),
             ("defaults (T.8 k40 p.95 min-p.05) V=248320 fp32", 248320, torch.float32, S(), 2),
             ("defaults V=262144 bf16", 262144, torch.bfloat16, S(), 3),
             ("T.7 no filter V=248320 fp32", 248320, torch.float32, S(temperature=0.7, top_k=0, top_p=1.0, min_p=0.0),
              4)]
    if tiny:
        specs = [(n.replace("262144", "9000").replace("248320", "8500"), 9000 if "262144" in n else 8500, dt, p, sd)
                 for n, v, dt, p, sd in specs]
    out = []
    for name, vocab, dtype, params, seed in specs:
        plan = sm.sample_plan(params, vocab, 1, device)

        def build(s, vocab=vocab, dtype=dtype, seed=seed):
            r = _gen(s, device)
            return dict(logits=r(1, vocab, scale=3.0, dtype=dtype), row_keys=seed_row_keys(seed, 1, device),
                        step=torch.zeros((), dtype=torch.int64, device=device),
                        tokens=torch.zeros(1, dtype=torch.int64, device=device))

        def compare(a, b):
            ok = int(a["tokens"]) == int(b["tokens"]) and int(a["step"]) == 1
            return ok, f"token {int(a['tokens'])}, reference {int(b['tokens'])}"

        out.append(Case("sample", name, build, lambda plan=plan, **kw: sm.sample(**kw, plan=plan),
                        lambda plan=plan, **kw: sm.sample_ref(**kw, plan=plan), compare,
                        vocab * (4 if dtype == torch.float32 else 2), ("tokens",),
                        torch_what="sampler math in torch (Sampler minus penalty)",
                        extra={"params": params, "seed": seed}))
    return out


def all_cases(device, tiny: bool = False) -> list[Case]:
    """Every case, in table order."""
    cases: list[Case] = []
    for fn in (_norm_cases, _rope_cases, _attn_cases, _gdn_cases, _router_cases, _sample_cases):
        cases += fn(device, tiny)
    if tiny:  # the labels name the real shapes the tiny ones stand in for
        for c in cases:
            c.shape = f"[tiny] {c.shape}"
    return cases

