"""Dtype names and byte counts as users write and read them."""

from __future__ import annotations

import re

import torch

_BYTES = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)")

DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16,
                                  "float32": torch.float32}
"""Settings' and config.json's dtype names -> torch dtypes."""


_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024 ** 2, "mib": 1024 ** 2, "mb": 1000 ** 2,
          "g": 1024 ** 3, "gib": 1024 ** 3, "gb": 1000 ** 3, "t": 1024 ** 4, "tib": 1024 ** 4, "tb": 1000 ** 4}


def parse_bytes(text: str | int) -> int:
    """``"24GiB"``, ``"24 GB"`` (10^9), ``"24G"`` (GiB), ``"1073741824"`` -> a positive byte count;
    ValueError naming the accepted forms otherwise."""
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        m = _BYTES.fullmatch(str(text).strip().lower())
        if m is None or m.group(2) not in _UNITS:
            raise ValueError("expected a size such as 24GiB, 24GB, 512MiB or a number of bytes")
        value, unit = float(m.group(1)), m.group(2)
    n = int(value * _UNITS[unit])
    if n <= 0:
        raise ValueError("expected a positive size")
    return n


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``; whole bytes below 1 KiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")
