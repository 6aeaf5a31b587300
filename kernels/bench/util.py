"""Shared timing and roofline harness for kernel benchmarks (GPU only).

* ``time_graph(fn, arg_sets, ...)``: captures ONE CUDA graph that calls ``fn(*arg_sets[i])`` for
  every input set in turn (``calls_per_graph`` calls in all), replays it ``replays`` times with
  CUDA events around each replay, and returns the median microseconds per call. Python launch
  overhead is excluded (graph replay); the graph's own per-kernel gap (~1-4 us) is included, as
  it is in a captured decode step. Pass enough distinct input sets that one pass over them is
  larger than the L2 cache (``sets_needed``), otherwise the weights come from L2 and the
  bandwidth figure is fiction.
* ``copy_bandwidth()``: device-to-device ``copy_`` of a large buffer, bytes read + written per
  second, measured in the same process so every fraction is against this run's ceiling.
* ``Row`` / ``write_results``: one row per kernel x shape: time, bytes that must move, GB/s,
  fraction of the measured copy bandwidth, the torch-equivalent time for the same work; written
  as JSON and as a markdown table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

__all__ = ["L2_BYTES", "sets_needed", "time_graph", "time_eager", "copy_bandwidth", "Row",
           "write_results", "markdown_table", "device_name"]

# H100/H200 L2, taken generously (the full GH100 die has 60 MB): too large only costs input sets
L2_BYTES = 60 * 1024 * 1024


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def sets_needed(bytes_per_set: int, *, factor: float = 3.0, cap: int = 256) -> int:
    """How many distinct input sets make one pass at least ``factor`` x the L2 size."""
    return max(1, min(cap, math.ceil(factor * L2_BYTES / max(1, bytes_per_set))))


def time_graph(fn: Callable[..., Any], arg_sets: Sequence[Sequence[Any]], *,
               calls_per_graph: int | None = None, replays: int = 15, warmup: int = 2) -> float:
    """Median microseconds per ``fn`` call, from CUDA-graph replays over rotating input sets."""
    n = len(arg_sets)
    calls = calls_per_graph or max(n, 20)
    for args in arg_sets[: min(n, 2)]:  # compile / load before capture
        fn(*args)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(min(calls, 3)):
            fn(*arg_sets[i % n])
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(*arg_sets[i % n])
    for _ in range(warmup):
        graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1000.0 / calls)
    del graph
    return statistics.median(times)


def time_eager(fn: Callable[..., Any], arg_sets: Sequence[Sequence[Any]], *, reps: int = 50) -> float:
    """Median microseconds per call without a graph (includes Python launch cost)."""
    n = len(arg_sets)
    for args in arg_sets[: min(n, 2)]:
        fn(*args)
    torch.cuda.synchronize()
    times = []
    for i in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(*arg_sets[i % n])
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1000.0)
    return statistics.median(times)


def copy_bandwidth(nbytes: int = 2 * 1024**3, reps: int = 10) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + written), median of ``reps``."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1000.0)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / statistics.median(times) / 1e9


@dataclasses.dataclass
class Row:
    """One benchmark result; ``frac_copy`` and ``gbps`` are filled by ``finish``."""

    kernel: str
    shape: str
    m: int
    time_us: float
    bytes_moved: int
    torch_us: float | None = None
    torch_what: str = ""
    note: str = ""
    gbps: float = 0.0
    frac_copy: float = 0.0

    def finish(self, copy_gbps: float) -> "Row":
        self.gbps = self.bytes_moved / (self.time_us * 1e-6) / 1e9 if self.time_us > 0 else 0.0
        self.frac_copy = self.gbps / copy_gbps if copy_gbps > 0 else 0.0
        return self


def markdown_table(rows: Sequence[Row], copy_gbps: float, title: str = "") -> str:
    lines = []
    if title:
        lines += [f"## {title}", ""]
    lines += [f"Measured device-to-device copy bandwidth: {copy_gbps:.0f} GB/s (read + write).", "",
              "| kernel | N x K | M | time (us) | MB moved | GB/s | of copy bw | torch (us) | torch op | note |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tu = f"{r.torch_us:.1f}" if r.torch_us is not None else "-"
        lines.append(f"| {r.kernel} | {r.shape} | {r.m} | {r.time_us:.1f} | {r.bytes_moved / 1e6:.2f} | "
                     f"{r.gbps:.0f} | {100 * r.frac_copy:.0f}% | {tu} | {r.torch_what} | {r.note} |")
    return "\n".join(lines) + "\n"


def write_results(rows: Sequence[Row], copy_gbps: float, out_dir: str | Path, stem: str,
                  extra: dict | None = None, title: str = "") -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` under ``out_dir``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"device": device_name(), "copy_gbps": copy_gbps, "torch": torch.__version__,
               "rows": [dataclasses.asdict(r) for r in rows], **(extra or {})}
    jp, mp = out / f"{stem}.json", out / f"{stem}.md"
    jp.write_text(json.dumps(payload, indent=1))
    mp.write_text(markdown_table(rows, copy_gbps, title or f"{stem} on {device_name()}"))
    return jp, mp
