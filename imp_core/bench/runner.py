"""The measurements of `imp bench`: prefill tok/s and time to first token per prompt length
(after one untimed warm-up prefill),
decode tok/s at each context (the cache marked as holding that many tokens, so long contexts
need no long prefill), repeated, with the roofline figures; and a per-op profile of one step."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from imp_core.bench.roofline import cache_bytes, sync
from imp_core.run.generator import Generator
from imp_core.run.sampling import SamplingParams


@dataclass
class DecodeResult:
    context: int
    tok_s: list[float]
    bytes_per_step: int
    capture_seconds: float = 0.0

    @property
    def median(self) -> float:
        return statistics.median(self.tok_s)


@dataclass
class BenchResult:
    prefill: dict[int, dict[str, float]] = field(default_factory=dict)
    decode: list[DecodeResult] = field(default_factory=list)
    profile: list[dict[str, Any]] = field(default_factory=list)


def _sampler(bench, device):
    params = SamplingParams(temperature=0.0, seed=0)
    if bench.fast is not None:
        from imp_core.fast.sampling import fast_sampler

        return fast_sampler(params, bench.vocab, device)[0]
    from imp_core.run.sampling import Sampler

    return Sampler(params, bench.vocab, device)


def _ids(n: int, vocab: int) -> list[int]:
    g = torch.Generator().manual_seed(n)
    return torch.randint(3, vocab, (n,), generator=g).tolist()


def capacity(prefill: list[int], contexts: list[int], decode: int) -> int:
    """Tokens the benchmark's cache holds: the longest prompt or context plus the decoded tokens."""
    return max([*prefill, *contexts, 1]) + decode + 2


def measure(bench, *, prefill: list[int], contexts: list[int], decode: int, repeat: int, graphs: bool
            ) -> BenchResult:
    model = bench.model
    device = model.device
    out = BenchResult()
    capacity_tokens = capacity(prefill, contexts, decode)
    gen = Generator(model, capacity_tokens, cuda_graphs=graphs and device.type == "cuda",
                    decoder=bench.fast.decoder if bench.fast is not None else None)
    sampler = _sampler(bench, device)
    if prefill:  # one untimed prefill first: kernel compilation, cuBLAS and allocator warm-up
        gen.reset()
        sampler.sample(gen.prefill(_ids(min(prefill), bench.vocab)))
        sync(device)
    for n in prefill:
        times = []
        for _ in range(repeat):
            gen.reset()
            sync(device)
            t0 = time.perf_counter()
            logits = gen.prefill(_ids(n, bench.vocab))
            sampler.sample(logits)
            sync(device)
            times.append(time.perf_counter() - t0)
        best = min(times)
        out.prefill[n] = {"tok_s": n / best, "ttft_s": best, "median_tok_s": n / statistics.median(times)}
    for ctx in contexts:
        kv, state = cache_bytes(gen.cache, ctx)
        rates, capture = [], 0.0
        for _ in range(repeat):
            gen.assume_history(ctx)
            gen.token_buf.fill_(5)
            capture += gen.step(sampler)  # the first step of a sampler captures its graph
            sync(device)
            t0 = time.perf_counter()
            for _ in range(decode):
                gen.step(sampler)
            sync(device)
            rates.append(decode / (time.perf_counter() - t0))
        out.decode.append(DecodeResult(ctx, rates, bench.weight_bytes + kv + state, capture))
    return out


def profile_step(bench, context: int, steps: int = 3, top: int = 25) -> list[dict[str, Any]]:
    """Per-op time of eager decode steps (CUDA kernels on a GPU, torch ops on a CPU): name,
    launches per step, time per step and share of the step."""
    from torch.profiler import ProfilerActivity, profile

    model = bench.model
    device = model.device
    gen = Generator(model, context + steps + 4, decoder=bench.fast.decoder if bench.fast is not None else None)
    gen.assume_history(context)
    gen.token_buf.fill_(5)
    gen.decode_step()
    sync(device)
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            gen.decode_step()
        sync(device)
    rows: dict[str, list[float]] = {}
    for ev in prof.key_averages():
        t = ev.device_time_total if cuda else ev.self_cpu_time_total
        if t <= 0 or (not cuda and ev.key.startswith("ProfilerStep")):
            continue
        r = rows.setdefault(ev.key[:100], [0.0, 0.0])
        r[0] += ev.count
        r[1] += t
    total = sum(t for _, t in rows.values()) or 1.0
    ranked = sorted(rows.items(), key=lambda kv: -kv[1][1])[:top]
    return [{"op": k, "launches_per_step": n / steps, "us_per_step": t / steps, "share": t / total}
            for k, (n, t) in ranked]
