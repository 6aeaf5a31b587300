"""The `imp serve` and `imp chat` commands (options only; the work is in serve_command and
chat_command, imported when the command runs)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer



def register(app: typer.Typer) -> None:
    from imp_core.cli.app import (ConfigOpt, ContextOpt, DeviceOpt, DtypeOpt, LogFileOpt, MinPOpt, ModelOpt,
                                  QuietOpt, RepeatPenaltyOpt, SetOpt, TemperatureOpt, TopKOpt, TopPOpt,
                                  VerboseOpt, sampling_flags)

    @app.command()
    def serve(
        model: Path = ModelOpt,
        host: str = typer.Option("127.0.0.1", "--host", help="address to bind (default: this machine only)"),
        port: int = typer.Option(8000, "--port"),
        served_model_name: Optional[str] = typer.Option(None, "--served-model-name",
                                                        help="the model name clients send (default: the checkpoint's directory name)"),
        max_queue: int = typer.Option(64, "--max-queue", min=0, help="requests that may wait; more get 429"),
        api_key: Optional[str] = typer.Option(None, "--api-key", envvar="IMP_API_KEY",
                                              help="require 'Authorization: Bearer KEY' on /v1 requests"),
        shutdown_timeout: float = typer.Option(30.0, "--shutdown-timeout",
                                               help="seconds in-flight requests may take to finish after SIGINT/SIGTERM"),
        max_tokens: Optional[int] = typer.Option(None, "--max-tokens", "-n", help="default max_tokens of a request"),
        temperature: Optional[float] = TemperatureOpt,
        top_k: Optional[int] = TopKOpt,
        top_p: Optional[float] = TopPOpt,
        min_p: Optional[float] = MinPOpt,
        repeat_penalty: Optional[float] = RepeatPenaltyOpt,
        seed: Optional[int] = typer.Option(None, "--seed", help="default seed of a request"),
        device: Optional[str] = DeviceOpt,
        dtype: Optional[str] = DtypeOpt,
        context: Optional[int] = ContextOpt,
        config: Optional[Path] = ConfigOpt,
        set_items: Optional[List[str]] = SetOpt,
        verbose: bool = VerboseOpt,
        quiet: bool = QuietOpt,
        log_file: Optional[Path] = LogFileOpt,
    ) -> None:
        """Serve the model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions)."""
        from imp_core.cli.app import _plugins, _settings, user_errors

        with user_errors():
            flags = sampling_flags(max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, seed, device,
                                    dtype, context)
            resolved = _settings(config, set_items, flags, verbose=verbose, quiet=quiet, log_file=log_file)
            from imp_core.cli.serve_command import serve_model

            serve_model(model, resolved, _plugins(), host=host, port=port, model_name=served_model_name,
                        max_queue=max_queue, api_key=api_key, shutdown_timeout=shutdown_timeout)

    @app.command()
    def chat(
        model: Path = ModelOpt,
        system: Optional[str] = typer.Option(None, "--system", help="system prompt"),
        max_tokens: Optional[int] = typer.Option(None, "--max-tokens", "-n", help="tokens per answer at most"),
        temperature: Optional[float] = TemperatureOpt,
        top_k: Optional[int] = TopKOpt,
        top_p: Optional[float] = TopPOpt,
        min_p: Optional[float] = MinPOpt,
        repeat_penalty: Optional[float] = RepeatPenaltyOpt,
        seed: Optional[int] = typer.Option(None, "--seed"),
        device: Optional[str] = DeviceOpt,
        dtype: Optional[str] = DtypeOpt,
        context: Optional[int] = ContextOpt,
        config: Optional[Path] = ConfigOpt,
        set_items: Optional[List[str]] = SetOpt,
        verbose: bool = VerboseOpt,
        quiet: bool = QuietOpt,
        log_file: Optional[Path] = LogFileOpt,
    ) -> None:
        """Chat with the model in the terminal (/reset starts over, /exit or Ctrl-D leaves, Ctrl-C stops an answer)."""
        from imp_core.cli.app import _plugins, _settings, user_errors

        with user_errors():
            flags = sampling_flags(max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, seed, device,
                                    dtype, context)
            resolved = _settings(config, set_items, flags, verbose=verbose, quiet=quiet, log_file=log_file)
            from imp_core.cli.chat_command import chat_loop

            chat_loop(model, resolved, _plugins(), system=system, stdin=sys.stdin, out=sys.stdout)
