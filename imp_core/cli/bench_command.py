"""`imp bench`: speed of a checkpoint or of a family preset with random weights (imp_core.bench)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import typer

from imp_core.errors import ConfigError


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what}: expected comma-separated token counts, got '{text}'") from None
    if any(v < 1 for v in values):
        raise ConfigError(f"{what}: token counts must be positive, got '{text}'")
    return values


def bench_command(
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="checkpoint directory or .gguf file"),
    preset: Optional[str] = typer.Option(None, "--preset", help="a family preset (imp bench --list), random weights"),
    fmt: str = typer.Option("bf16", "--format", help="how a preset's random weights are stored (imp bench --list)"),
    prefill: str = typer.Option("512,2048", "--prefill", help="prompt lengths, comma-separated ('' for none)"),
    decode: int = typer.Option(128, "--decode", help="tokens decoded per measurement"),
    context: str = typer.Option("128,1024,4096,32768", "--context", help="decode contexts, comma-separated"),
    path: str = typer.Option("auto", "--path", help="auto, fast or reference"),
    graphs: str = typer.Option("on", "--graphs", help="on or off: CUDA graph replay of the decode step"),
    repeat: int = typer.Option(3, "--repeat", help="measurements per point (median, min, max)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the report as JSON"),
    profile: bool = typer.Option(False, "--profile", help="per-op breakdown of one decode step"),
    peer: Optional[str] = typer.Option(None, "--peer", help="also measure a peer on the same shapes: transformers"),
    list_presets: bool = typer.Option(False, "--list", help="the presets and formats, then exit"),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="auto (bf16 on CUDA, fp32 on the CPU), bfloat16, ..."),
    config: Optional[Path] = typer.Option(None, "--config"),
    set_items: Optional[list[str]] = typer.Option(None, "--set"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Measure prefill and decode speed with the roofline (bytes per step, fraction of the copy
    bandwidth measured in the same run) and, with --profile, where a decode step's time goes."""
    from imp_core.cli.app import _plugins, _settings, user_errors

    with user_errors():
        resolved = _settings(config, set_items, {"runtime.device": device, "runtime.dtype": dtype},
                             verbose=verbose, quiet=not verbose)
        plugins = _plugins()
        from imp_core.bench import presets as bench_presets

        if list_presets:
            for p in bench_presets.all_presets(plugins):
                typer.echo(f"{p.name:<24} family {p.family.name:<8} formats: {', '.join(p.formats)}")
            return
        if (model is None) == (preset is None):
            raise ConfigError("pass exactly one of --model PATH and --preset NAME (imp bench --list)")
        if path not in ("auto", "fast", "reference") or graphs not in ("on", "off"):
            raise ConfigError(f"--path must be auto, fast or reference and --graphs on or off "
                              f"(got {path!r}, {graphs!r})")
        if decode < 1 or repeat < 1:
            raise ConfigError("--decode and --repeat must be at least 1")
        lengths, contexts = _ints(prefill, "--prefill"), _ints(context, "--context")
        if peer is not None and peer != "transformers":
            raise ConfigError(f"--peer: the only peer is 'transformers' (got '{peer}'); llama.cpp's is a GPU-machine "
                              f"script (see bench/results)")
        if peer is not None and preset is None:
            raise ConfigError("--peer transformers needs --preset (the peer is built from the preset's config)")
        from imp_core.bench import model as bench_model
        from imp_core.bench import report, roofline, runner
        from imp_core.device_memory import apply_limit
        from imp_core.run.session import resolve_device
        from imp_core.units import DTYPES

        if preset is not None:
            dev = resolve_device(resolved.settings.runtime.device)
            apply_limit(dev, resolved.settings.runtime.memory_limit)
            want = resolved.settings.runtime.dtype
            dt = DTYPES[want] if want != "auto" else (DTYPES["float32"] if dev.type == "cpu" else DTYPES["bfloat16"])
            bench = bench_model.build_preset(plugins, bench_presets.find_preset(plugins, preset), fmt,
                                             resolved.settings, dev, dt, path,
                                             context=runner.capacity(lengths, contexts, decode))
        else:
            bench = bench_model.load_checkpoint(plugins, model, resolved, path)
            dev = bench.model.device
        result = runner.measure(bench, prefill=lengths, contexts=contexts, decode=decode, repeat=repeat,
                                graphs=graphs == "on")
        if profile:
            result.profile = runner.profile_step(bench, contexts[0] if contexts else 128)
        args = {"model": str(model) if model else None, "preset": preset, "format": fmt if preset else None,
                "prefill": lengths, "decode": decode, "context": contexts, "path": path, "graphs": graphs,
                "repeat": repeat, "peer": peer}
        data = report.to_json(bench, result, device=dev, copy_bw=roofline.copy_bandwidth(dev), args=args)
        if peer is not None:
            from imp_core.bench import peer_transformers

            del bench  # the peer gets the device memory imp's model held
            import gc

            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            report.add_peer(data, "transformers", peer_transformers.measure(
                bench_presets.find_preset(plugins, preset), dev, prefill=lengths, decode=decode, repeat=repeat))
        typer.echo(report.text(data))
        if json_out is not None:
            json_out.write_text(json.dumps(data, indent=1, default=str))
