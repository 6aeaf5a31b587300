"""Log output through loguru: one short stderr sink, an optional debug file, the resolved plan.

Stdout is reserved for generated text, so every imp log line goes to stderr. Other modules log
with ``from loguru import logger``; :func:`setup_logging` (called once by the CLI, safe to call
again) decides where those lines go.
"""

from __future__ import annotations

import sys
from pathlib import Path

from loguru import logger

from imp_core.errors import ConfigError

LEVELS = {"debug": "DEBUG", "info": "INFO", "warning": "WARNING", "error": "ERROR"}
STDERR_FORMAT = "<dim>imp</dim>  <level>{level: <7}</level> <level>{message}</level>"
FILE_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} {name}:{function}:{line}  {message}"
DEFAULT_PLAN_TITLE = "resolved plan"

_imp_sink_ids: list[int] = []


class _CurrentStderr:
    """A stream that writes to whatever ``sys.stderr`` is at write time.

    Binding the sink to the object at set-up time would keep writing to a stream that test
    runners or the CLI have since swapped out (or closed).
    """

    def write(self, text: str) -> None:
        sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def remove_imp_sinks() -> None:
    """Remove the sinks added by :func:`setup_logging` (and loguru's default stderr sink)."""
    while _imp_sink_ids:
        try:
            logger.remove(_imp_sink_ids.pop())
        except ValueError:  # already removed by someone calling logger.remove()
            pass
    try:
        logger.remove(0)  # loguru's default handler would print every line a second time
    except ValueError:
        pass


def _stderr_is_tty() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def setup_logging(
    level: str = "info",
    file: str | Path | None = None,
    *,
    verbose: bool = False,
    quiet: bool = False,
) -> None:
    """Send imp's logs to stderr at ``level`` (and everything, at debug, to ``file``).

    ``verbose`` lowers the stderr level to debug, ``quiet`` raises it to warning; they cannot be
    combined. Colour is used only when stderr is a terminal. Calling it again replaces the sinks
    of the previous call.
    """
    if verbose and quiet:
        raise ConfigError("--verbose and --quiet cannot be used together")
    name = str(level).strip().lower()
    if name == "warn":
        name = "warning"
    if name not in LEVELS:
        raise ConfigError(f"unknown log level '{level}': expected one of {', '.join(LEVELS)}")
    if verbose:
        name = "debug"
    elif quiet:
        name = "warning"

    remove_imp_sinks()
    _imp_sink_ids.append(
        logger.add(
            _CurrentStderr(),
            level=LEVELS[name],
            format=STDERR_FORMAT,
            colorize=_stderr_is_tty(),
            backtrace=False,
            diagnose=False,
        )
    )
    if file is not None:
        try:
            _imp_sink_ids.append(
                logger.add(
                    str(file),
                    level="DEBUG",
                    format=FILE_FORMAT,
                    colorize=False,
                    encoding="utf-8",
                    backtrace=True,
                    diagnose=False,
                )
            )
        except OSError as err:  # the stderr sink stays, so the CLI can still report
            raise ConfigError(f"cannot open log file {file}: {err.strerror or err}") from None


def format_plan(title: str, items: list[tuple[str, str]]) -> str:
    """The text :func:`log_plan` logs: ``title`` then one aligned ``  key: value`` line per item.

    Values spanning several lines are indented to the value column.
    """
    lines = [title or DEFAULT_PLAN_TITLE]
    if not items:
        return lines[0] + "\n  (empty)"
    width = max(len(str(key)) for key, _ in items) + 1  # room for the colon
    for key, value in items:
        head = f"  {str(key) + ':':<{width}} "
        value_lines = str(value).splitlines() or [""]
        lines.append((head + value_lines[0]).rstrip())
        lines.extend((" " * len(head) + extra).rstrip() for extra in value_lines[1:])
    return "\n".join(lines)


def log_plan(title: str, items: list[tuple[str, str]]) -> None:
    """Log the resolved plan as one INFO record (see :func:`format_plan`)."""
    logger.opt(depth=1).info(format_plan(title, items))
