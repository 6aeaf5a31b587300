"""`imp check`: the decode fast path against the reference path on the user's checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from imp_core.errors import ConfigError


def check_command(
    model: Path = typer.Option(..., "--model", "-m", help="checkpoint directory or .gguf file"),
    prompt: str = typer.Option("The quick brown fox jumps over the lazy dog.", "--prompt", "-p"),
    steps: int = typer.Option(8, "--steps", "-n", help="decode steps compared"),
    device: Optional[str] = typer.Option(None, "--device", help="cuda or cuda:N (the fast path's device)"),
    config: Optional[Path] = typer.Option(None, "--config"),
    set_items: Optional[list[str]] = typer.Option(None, "--set"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Compare the fast path with the reference path: hidden states after every layer, the logits
    and greedy tokens; exits 1 above tolerance."""
    from imp_core.cli.app import _plugins, _settings, user_errors

    with user_errors():
        flags = {"runtime.device": device, "runtime.dtype": "bfloat16", "runtime.fast_path": "on"}
        resolved = _settings(config, set_items, flags, verbose=verbose, quiet=not verbose)
        from imp_core.fast.oracle import REL_TOL, compare
        from imp_core.run.session import load_session

        session = load_session(model, resolved, _plugins())
        if session.fast is None:
            raise ConfigError("the decode fast path is not bound: " + "; ".join(session.inspection.fast_path_reasons))
        tok = session.tokenizer
        ids = tok.encode(prompt, add_special_tokens=True)
        if steps < 1 or len(ids) + steps + 2 > session.inspection.context:
            raise ConfigError(f"--steps {steps} with a {len(ids)}-token prompt does not fit the context "
                              f"{session.inspection.context}")
        report = compare(session.model, session.fast, ids, steps)
        typer.echo(f"imp check: {model} ({session.inspection.info.architecture}), {len(ids)}-token prompt, "
                   f"{steps} decode steps; tolerance: relative L2 error <= {REL_TOL:g} x sqrt(layer + 1)")
        typer.echo(report.table())
        if report.routes_total:
            typer.echo(f"routing: the fast router chose the reference's experts in {report.routes_same} of "
                       f"{report.routes_total} MoE layer steps ({'ok' if report.routing_ok else 'FAIL'})")
        div = report.first_divergence
        typer.echo("greedy tokens: identical" if div is None else
                   f"greedy tokens: first divergence at step {div} (reference {report.ref_tokens[div]}, "
                   f"fast {report.fast_tokens[div]})")
        sys.stdout.flush()
        if not report.ok:
            typer.echo("error: the fast path differs from the reference path beyond tolerance", err=True)
            raise typer.Exit(1)
