"""``imp run --prompt-file FILE``: the prompt read from a UTF-8 text file."""

from __future__ import annotations

from pathlib import Path

from imp_core.errors import ImpError

MAX_PROMPT_FILE = 64 << 20  # far beyond any context; keeps a wrong path (a checkpoint shard) cheap


def read_prompt_file(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_PROMPT_FILE:
            raise ImpError(f"--prompt-file {path}: {size} bytes, expected a text file of at most "
                           f"{MAX_PROMPT_FILE >> 20} MiB")
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ImpError(f"--prompt-file {path}: no such file") from None
    except IsADirectoryError:
        raise ImpError(f"--prompt-file {path}: is a directory, expected a text file") from None
    except OSError as exc:
        raise ImpError(f"--prompt-file {path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ImpError(f"--prompt-file {path}: not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise ImpError(f"--prompt-file {path}: the file is empty")
    return text
