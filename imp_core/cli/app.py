"""The `imp` command line: run, serve, chat, check, bench, info, plugins, config show."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

import typer

from imp_core.cli.pipes import quiet_broken_pipe
from imp_core.errors import ImpError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="imp: run large language models from their published checkpoints.")
config_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Inspect settings.")
app.add_typer(config_app, name="config")

ModelOpt = typer.Option(..., "--model", "-m", help="checkpoint directory (config.json + *.safetensors) or .gguf file")
ConfigOpt = typer.Option(None, "--config", help="settings file (TOML), above ./imp.toml and the user file")
SetOpt = typer.Option(None, "--set", help="override one setting: section.key=value (repeatable)")
VerboseOpt = typer.Option(False, "--verbose", "-v", help="debug logging")
QuietOpt = typer.Option(False, "--quiet", "-q", help="warnings and errors only")
LogFileOpt = typer.Option(None, "--log-file", help="also write a debug log to this file")
# the sampling and runtime flags run, serve and chat share (each maps to one settings key)
TemperatureOpt = typer.Option(None, "--temperature", help="0 = greedy")
TopKOpt = typer.Option(None, "--top-k")
TopPOpt = typer.Option(None, "--top-p")
MinPOpt = typer.Option(None, "--min-p")
RepeatPenaltyOpt = typer.Option(None, "--repeat-penalty")
DeviceOpt = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N")
DtypeOpt = typer.Option(None, "--dtype", help="auto, bfloat16, float16 or float32")
ContextOpt = typer.Option(None, "--context", help="context length in tokens (0 = auto)")


def sampling_flags(max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, seed, device, dtype,
                   context) -> dict:
    """The shared flags as settings keys (None: not given)."""
    return {"runtime.max_tokens": max_tokens, "sampling.temperature": temperature, "sampling.top_k": top_k,
            "sampling.top_p": top_p, "sampling.min_p": min_p, "sampling.repeat_penalty": repeat_penalty,
            "sampling.seed": seed, "runtime.device": device, "runtime.dtype": dtype, "runtime.context": context}


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn an ImpError into one line on stderr and a non-zero exit, with no traceback."""
    try:
        yield
    except ImpError as exc:
        sys.stdout.flush()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("\ninterrupted", err=True)
        raise typer.Exit(130) from None
    except BrokenPipeError:  # stdout's reader went away (`imp run ... | head -c 1`)
        raise typer.Exit(quiet_broken_pipe()) from None


def _settings(config: Optional[Path], set_items: Optional[List[str]], flags: dict, *,
              verbose: bool = False, quiet: bool = False, log_file: Optional[Path] = None):
    from imp_core.logging import setup_logging
    from imp_core.settings.resolve import load_settings

    resolved = load_settings(config_file=config, set_items=set_items or (), cli_flags=flags)
    log = resolved.settings.logging
    setup_logging(log.level, log_file or log.file, verbose=verbose, quiet=quiet)
    return resolved


def _plugins():
    from imp_core.plugin.manager import load_plugins

    return load_plugins()


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"imp {version('imp-llm')}")
        except PackageNotFoundError:
            typer.echo("imp (not installed as a package)")
        raise typer.Exit()


@app.callback()
def _main(_: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="print imp's version and exit")) -> None:
    """imp: run large language models from their published checkpoints."""


def _read_prompt(prompt: Optional[str], prompt_file: Optional[Path] = None) -> str:
    if prompt is not None and prompt_file is not None:
        raise ImpError("--prompt and --prompt-file both given: pass one")
    if prompt_file is not None:
        from imp_core.cli.prompt_file import read_prompt_file

        return read_prompt_file(prompt_file)
    if prompt is not None:
        return prompt
    if not sys.stdin.isatty():
        text = sys.stdin.read()
        if text.strip():
            return text
    raise ImpError("no prompt: pass --prompt TEXT or pipe the prompt on stdin")


@app.command()
def run(
    model: Path = ModelOpt,
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="the prompt (default: read stdin)"),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file", help="read the prompt from this file (UTF-8)"),
    system: Optional[str] = typer.Option(None, "--system", help="system message (through the chat template)"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", "-n", help="tokens to generate"),
    temperature: Optional[float] = TemperatureOpt,
    top_k: Optional[int] = TopKOpt,
    top_p: Optional[float] = TopPOpt,
    min_p: Optional[float] = MinPOpt,
    repeat_penalty: Optional[float] = RepeatPenaltyOpt,
    seed: Optional[int] = typer.Option(None, "--seed", help="same seed, same output"),
    stop: Optional[List[str]] = typer.Option(None, "--stop", help="stop string (repeatable)"),
    chat: Optional[bool] = typer.Option(None, "--chat/--raw", help="apply the chat template (default when the checkpoint has one) or send the prompt as is"),
    device: Optional[str] = DeviceOpt,
    dtype: Optional[str] = DtypeOpt,
    context: Optional[int] = ContextOpt,
    config: Optional[Path] = ConfigOpt,
    set_items: Optional[List[str]] = SetOpt,
    verbose: bool = VerboseOpt,
    quiet: bool = QuietOpt,
    log_file: Optional[Path] = LogFileOpt,
) -> None:
    """Generate text from a prompt, streaming it to stdout."""
    with user_errors():
        flags = {**sampling_flags(max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, seed, device,
                                  dtype, context), "runtime.chat": chat}
        resolved = _settings(config, set_items, flags, verbose=verbose, quiet=quiet, log_file=log_file)
        text = _read_prompt(prompt, prompt_file)
        from imp_core.cli.run_command import run_prompt

        stats = run_prompt(model, text, resolved, _plugins(), stop=stop or [], out=sys.stdout, system=system)
        if not quiet:
            typer.echo(stats.line(), err=True)


@app.command()
def info(
    model: Path = ModelOpt,
    device: Optional[str] = typer.Option(None, "--device"),
    dtype: Optional[str] = typer.Option(None, "--dtype"),
    config: Optional[Path] = ConfigOpt,
    set_items: Optional[List[str]] = SetOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Describe a checkpoint and what a run would do (reads no weights)."""
    with user_errors():
        resolved = _settings(config, set_items, {"runtime.device": device, "runtime.dtype": dtype},
                             verbose=verbose, quiet=True)
        from imp_core.cli.info import describe_checkpoint

        typer.echo(describe_checkpoint(model, resolved, _plugins()))


@app.command()
def plugins(verbose: bool = VerboseOpt) -> None:
    """List installed plugins, the architectures they claim and where they come from."""
    with user_errors():
        _settings(None, None, {}, verbose=verbose, quiet=not verbose)
        from imp_core.cli.info import describe_plugins

        typer.echo(describe_plugins(_plugins()))


@config_app.command("show")
def config_show(config: Optional[Path] = ConfigOpt, set_items: Optional[List[str]] = SetOpt) -> None:
    """Print the resolved settings and where each value came from."""
    with user_errors():
        resolved = _settings(config, set_items, {}, quiet=True)
        typer.echo(resolved.show())


def main() -> None:
    app()


def _register_commands() -> None:
    """Commands that live in their own modules (their heavy imports happen when they run)."""
    from imp_core.cli.bench_command import bench_command
    from imp_core.cli.check import check_command
    from imp_core.cli.server_commands import register as register_server_commands

    app.command("check")(check_command)
    app.command("bench")(bench_command)
    register_server_commands(app)


_register_commands()
