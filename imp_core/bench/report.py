"""The printed table and the JSON report of one `imp bench` run."""

from __future__ import annotations

import platform
import resource
from typing import Any

import torch

from imp_core.bench.runner import BenchResult


def machine(device: torch.device) -> dict[str, Any]:
    info = {"device": str(device), "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import numba

        info["numba"] = numba.__version__
        from importlib import metadata

        info["numba_cuda"] = metadata.version("numba-cuda")
    except Exception:  # noqa: BLE001 - versions are information only
        pass
    return info


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def to_json(bench, result: BenchResult, *, device: torch.device, copy_bw: float, args: dict) -> dict[str, Any]:
    decode = []
    for d in result.decode:
        med = d.median
        decode.append({"context": d.context, "tok_s_median": med, "tok_s_min": min(d.tok_s), "tok_s_max": max(d.tok_s),
                       "bytes_per_step": d.bytes_per_step, "achieved_GB_s": d.bytes_per_step * med / 1e9,
                       "fraction_of_copy_bw": d.bytes_per_step * med / copy_bw,
                       "graph_capture_s": d.capture_seconds})
    return {"machine": machine(device), "args": args, "plan": [list(p) for p in bench.plan],
            "load_s": bench.load_seconds, "weight_bytes_per_token": bench.weight_bytes,
            "copy_bw_GB_s": copy_bw / 1e9, "peak_memory_bytes": peak_memory_bytes(device),
            "prefill": [{"tokens": n, **v} for n, v in result.prefill.items()], "decode": decode,
            "profile": result.profile}


def add_peer(report: dict[str, Any], name: str, peer: dict[str, Any]) -> None:
    """Put a peer's figures beside imp's, with imp/peer ratios where the same point was measured."""
    ours = {p["tokens"]: p["tok_s"] for p in report["prefill"]}
    for p in peer["prefill"]:
        if p["tokens"] in ours:
            p["imp_ratio"] = ours[p["tokens"]] / p["tok_s"]
    d = peer.get("decode")
    if d and report["decode"]:
        first = report["decode"][0]  # imp's shortest context is the closest to the peer's short prompt
        d["imp_ratio"], d["imp_context"] = first["tok_s_median"] / d["tok_s_median"], first["context"]
    report.setdefault("peers", {})[name] = peer


def text(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"imp bench on {m.get('gpu', m['device'])} (torch {m['torch']}, numba {m.get('numba', '-')}); "
             f"copy bandwidth {report['copy_bw_GB_s']:.0f} GB/s measured now"]
    lines += [f"  {k}: {v}" for k, v in report["plan"]]
    lines.append(f"  load {report['load_s']:.1f} s, peak memory {report['peak_memory_bytes'] / 2**30:.2f} GiB, "
                 f"weights read per token {report['weight_bytes_per_token'] / 1e9:.3f} GB")
    if report["prefill"]:
        lines.append("prefill   tokens      tok/s    time to first token")
        for p in report["prefill"]:
            lines.append(f"          {p['tokens']:>6} {p['tok_s']:>10.1f}    {p['ttft_s'] * 1e3:>8.1f} ms")
    if report["decode"]:
        lines.append("decode   context   tok/s (median  min  max)   GB/step   GB/s   of copy bw")
        for d in report["decode"]:
            lines.append(f"         {d['context']:>7}   {d['tok_s_median']:>8.1f} {d['tok_s_min']:>6.1f} "
                         f"{d['tok_s_max']:>6.1f}   {d['bytes_per_step'] / 1e9:>7.3f} {d['achieved_GB_s']:>7.1f}"
                         f"   {d['fraction_of_copy_bw']:>6.1%}"
                         + (f"   (graph capture {d['graph_capture_s'] * 1e3:.0f} ms)" if d["graph_capture_s"] else ""))
    if report["profile"]:
        lines.append("profile of one decode step   us/step  launches  share  op")
        for p in report["profile"]:
            lines.append(f"                         {p['us_per_step']:>9.1f} {p['launches_per_step']:>8.1f} "
                         f"{p['share']:>6.1%}  {p['op'][:70]}")
    for name, peer in report.get("peers", {}).items():
        lines.append(f"peer {name} {peer.get('transformers', '')} ({peer['class']}, {peer['dtype'].replace('torch.', '')}, "
                     f"same shapes, random weights)")
        for p in peer["prefill"]:
            ratio = p.get("imp_ratio")
            lines.append(f"  prefill {p['tokens']:>6} tokens {p['tok_s']:>10.1f} tok/s"
                         + (f"   imp/{name} {ratio:.2f}x" if ratio else ""))
        d = peer.get("decode")
        if d:
            how = "static cache + torch.compile" if d["compiled"] else "static cache, eager"
            lines.append(f"  decode {d['tokens']} tokens after a {d['prompt']}-token prompt ({how}): "
                         f"{d['tok_s_median']:.1f} tok/s"
                         + (f"   imp/{name} {d['imp_ratio']:.2f}x (imp at context {d['imp_context']})"
                            if d.get("imp_ratio") else ""))
    return "\n".join(lines)
