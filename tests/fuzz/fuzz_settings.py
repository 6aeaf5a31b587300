"""Fuzz the settings loader: the input is an imp.toml; its lines that look like ``k=v`` are also
given as ``--set`` items."""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["imp_core.settings"]):
    from imp_core.settings.resolve import load_settings
from imp_core.errors import ImpError
from tests.fuzz.harness import main, replace_file, scratch_dir

DIR = scratch_dir()
NO_USER_FILE = DIR / "no-user-file.toml"


def seeds() -> dict[str, bytes]:
    return {
        "sections": b'[runtime]\ndevice = "cpu"\ncontext = 8192\nmax_tokens = 64\n\n'
                    b'[sampling]\ntemperature = 0.7\ntop_k = 20\nseed = 3\n',
        "enums": b'[attention]\nbackend = "sdpa"\n[quant]\ndequant = "on_the_fly"\n'
                 b'[logging]\nlevel = "debug"\n',
        "set-items": b"sampling.top_p=0.5\nruntime.chat=false\nruntime.dtype=bf16\n",
    }


def target(data: bytes) -> None:
    path = DIR / "fuzz.toml"
    replace_file(path, data)
    items = [ln for ln in data.decode("utf-8", "replace").splitlines() if "=" in ln][:4]
    try:
        load_settings(config_file=path, env={}, cwd=DIR, user_config=NO_USER_FILE)
    except ImpError:
        pass
    try:
        load_settings(set_items=items, env={}, cwd=DIR, user_config=NO_USER_FILE)
    except ImpError:
        pass


if __name__ == "__main__":
    main(target, seeds)
