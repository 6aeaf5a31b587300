"""The `imp` command line (typer)."""

from imp_core.cli.app import app, main

__all__ = ["app", "main"]
