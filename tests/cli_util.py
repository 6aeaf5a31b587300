"""Run the `imp` CLI in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_imp(*args: str, env: dict | None = None, stdin: str | None = None, cwd: Path | None = None,
            timeout: int = 120) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("IMP_")}
    full_env.setdefault("IMP_USER_CONFIG", str(REPO / "tests" / "no-such-user-config.toml"))
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "imp_core.cli", *args], input=stdin, text=True,
                          capture_output=True, env=full_env, cwd=cwd, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """A user error: non-zero exit, no traceback, one 'error:' line containing every needle."""
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]
