"""The fast path checked against the reference path on the user's own checkpoint (``imp check``).

Both paths read the prompt through the reference forward (prefill is not on the fast path), then
decode the same tokens (teacher-forced with the reference's greedy choice), so every step compares
one decode step: the hidden state after every layer, then the logits. Routing is a discrete
choice, so MoE layers of the fast path take the reference's experts during the comparison and
the fast router's own choices are counted apart (agreement must stay above MIN_ROUTE_AGREEMENT).
A second pass lets each path choose its own greedy tokens and reports the first token where
they part.

Tolerance: both paths compute the same dequantised model in bf16 with fp32 accumulation; they
differ in the order of the fp32 sums and in where values are rounded to bf16 (the reference
rounds each dequantised weight to bf16 before its matmul; the kernels multiply the exact packed
values and apply the scales in fp32, and fuse some roundings away). Each such difference is about
half a bf16 ulp (2^-9 relative) of the value it touches, in random directions, so a layer's
relative L2 error ||fast - ref|| / ||ref|| is a few 2^-9 from its own roundings plus what the
layers below passed up, which adds like a random walk: layer i passes within
REL_TOL * sqrt(i + 1), REL_TOL = 2^-5 (3.1%, ~16 roundings' worth), and the logits within the
last layer's bound. (Measured on tiny checkpoints: 0.4-0.7% at the first layer, growing to 2-4%
after six Gemma-4 layers, whose sandwich norms amplify.) A wrong formula, layout or scale is off
by O(1) in the values it touches, and it shows at the first layer of its kind, where the bound is
tightest.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from imp_core.layers.attention import SDPA
from imp_core.layers.moe import RouteTrace
from imp_core.run.generator import Generator

REL_TOL = 2.0 ** -5
MIN_ROUTE_AGREEMENT = 0.9


@dataclass
class Row:
    what: str
    max_abs: float
    rel: float
    tol: float = REL_TOL

    @property
    def ok(self) -> bool:
        return self.rel <= self.tol


@dataclass
class CheckReport:
    rows: list[Row] = field(default_factory=list)
    ref_tokens: list[int] = field(default_factory=list)
    fast_tokens: list[int] = field(default_factory=list)
    routes_same: int = 0  # MoE layers x steps where the fast router chose the reference's experts
    routes_total: int = 0

    @property
    def routing_ok(self) -> bool:
        # the router rounds its logits to bf16 like the reference but sums in another order, so
        # an exact near-tie may flip one expert now and then (one flip is allowed however few the
        # steps); a wrong router flips most of them
        flips = self.routes_total - self.routes_same
        return flips <= max(1.0, (1 - MIN_ROUTE_AGREEMENT) * self.routes_total)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows) and self.routing_ok

    @property
    def first_divergence(self) -> int | None:
        for i, (a, b) in enumerate(zip(self.ref_tokens, self.fast_tokens)):
            if a != b:
                return i
        return None

    def table(self) -> str:
        lines = [f"{'what':<28} {'max abs err':>12} {'rel L2 err':>10} {'tolerance':>10}  pass"]
        for r in self.rows:
            lines.append(f"{r.what:<28} {r.max_abs:>12.4g} {r.rel:>10.4g} {r.tol:>10.4g}  {'ok' if r.ok else 'FAIL'}")
        return "\n".join(lines)


@contextmanager
def reference_attention(model):
    """The reference path attends with torch SDPA, whatever the plan chose for the fast path."""
    saved = model.attention_backends
    model.set_attention_backends({i: SDPA for i in saved} if saved else {})
    try:
        yield
    finally:
        model.set_attention_backends(saved)


def _row(what: str, ref: torch.Tensor, fast: torch.Tensor, depth: int) -> Row:
    a, b = ref.double().reshape(-1), fast.double().reshape(-1)
    tol = REL_TOL * math.sqrt(depth + 1)
    if not torch.isfinite(b).all():
        return Row(what, float("inf"), float("inf"), tol)
    rel = float((a - b).norm() / a.norm().clamp_min(1e-30))
    return Row(what, float((a - b).abs().max()), rel, tol)


def compare(model, fast, prompt: list[int], steps: int, *, context: int | None = None) -> CheckReport:
    """Layer-by-layer and logit comparison over ``steps`` teacher-forced decode steps, then the
    free-running greedy tokens of both paths."""
    context = context or len(prompt) + steps + 2
    report = CheckReport()
    fst = Generator(model, context, decoder=fast.decoder)  # its attention: the plan's (kernels)
    with reference_attention(model):
        ref = Generator(model, context)
        first = ref.prefill(prompt)
        fst.prefill(prompt)
        token = int(first.argmax(-1))
        worst: dict[str, Row] = {}
        for _ in range(steps):
            for g in (ref, fst):
                g.token_buf.fill_(token)
            model.layer_trace, fst.decoder.trace = [], []
            RouteTrace.active = []
            a = ref.decode_step()
            fst.decoder.forced_routes, fst.decoder.routes = RouteTrace.active, []
            RouteTrace.active = None
            reference_routes = list(fst.decoder.forced_routes)
            b = fst.decode_step()
            for (ref_ids, _), ours in zip(reference_routes, fst.decoder.routes):
                report.routes_total += 1
                report.routes_same += int(sorted(ref_ids.reshape(-1).tolist()) == sorted(ours.reshape(-1).tolist()))
            rows = [_row(f"layer {i}", x, y, i) for i, (x, y) in enumerate(zip(model.layer_trace,
                                                                                  fst.decoder.trace))]
            rows.append(_row("logits", a, b, len(rows) - 1))
            for r in rows:
                if r.what not in worst or r.rel > worst[r.what].rel:
                    worst[r.what] = r
            token = int(a.float().argmax(-1))
        model.layer_trace = fst.decoder.trace = fst.decoder.forced_routes = fst.decoder.routes = None
        report.rows = list(worst.values())
        report.ref_tokens = _greedy(ref, prompt, steps)
        report.fast_tokens = _greedy(fst, prompt, steps)
    return report


def _greedy(gen: Generator, prompt: list[int], steps: int) -> list[int]:
    gen.reset()
    token = int(gen.prefill(prompt).argmax(-1))
    out = [token]
    for _ in range(steps - 1):
        gen.token_buf.fill_(token)
        token = int(gen.decode_step().float().argmax(-1))
        out.append(token)
    return out
