"""JSON from checkpoint files (config.json, shard indexes, safetensors headers, tokenizer files).

These files come from people who did not write imp, so parsing is bounded: nesting deeper than
``MAX_DEPTH`` is refused (a config or header is a few levels deep; 100k levels would otherwise
end in a RecursionError somewhere later), and every way ``json`` can fail, including numbers
too long to convert, is one ``CheckpointError`` naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imp_core.errors import CheckpointError

MAX_DEPTH = 64


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return False


def parse_json(raw: bytes | str, where: str, what: str = "JSON") -> Any:
    """Parse ``raw`` (UTF-8); errors read ``{where}: not valid {what} (...)``."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        data = json.loads(text)
    except UnicodeDecodeError:
        raise CheckpointError(f"{where}: not valid {what} (not UTF-8 text)") from None
    except RecursionError:
        raise CheckpointError(f"{where}: not valid {what} (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
        detail = " ".join(str(exc).split())[:120]
        raise CheckpointError(f"{where}: not valid {what} ({detail})") from None
    if _depth_exceeds(data, MAX_DEPTH):
        raise CheckpointError(f"{where}: not valid {what} (nested more than {MAX_DEPTH} levels deep)")
    return data


def read_json_object(path: Path, what: str = "JSON") -> dict[str, Any]:
    """The JSON object in the file ``path``; anything else is a one-line CheckpointError."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    data = parse_json(raw, str(path), what)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data
