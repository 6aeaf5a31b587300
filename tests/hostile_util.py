"""Damaged copies of the demo checkpoint for the hostile-input tests."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any, Callable

from tests.cli_inproc import invoke_imp
from tests.cli_util import assert_one_line_error

SHARD = "model.safetensors"


def copy_checkpoint(good: Path, dest: Path) -> Path:
    shutil.copytree(good, dest)
    return dest


def edit_text_config(ck: Path, **changes: Any) -> Path:
    cfg = json.loads((ck / "config.json").read_text())
    cfg["text_config"].update(changes)
    (ck / "config.json").write_text(json.dumps(cfg))
    return ck


def read_header(shard: Path) -> tuple[dict, bytes]:
    raw = shard.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_header(shard: Path, header: dict | str, data: bytes) -> None:
    text = header if isinstance(header, str) else json.dumps(header)
    raw = text.encode()
    shard.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def edit_header(ck: Path, edit: Callable[[dict], Any]) -> Path:
    shard = ck / SHARD
    header, data = read_header(shard)
    edit(header)
    write_header(shard, header, data)
    return ck


def assert_exit_2(*args: str, needles: tuple[str, ...], stdin: str | None = None) -> str:
    """`imp ARGS` ends with exit status 2 and one `error:` line holding every needle."""
    proc = invoke_imp(*args, stdin=stdin)
    line = assert_one_line_error(proc, *needles)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    return line
