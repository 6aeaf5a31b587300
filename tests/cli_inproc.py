"""Run the `imp` CLI in this process (no interpreter start-up, no torch import per call).

The result has the attributes of ``subprocess.CompletedProcess`` so ``tests.cli_util``'s
assertions apply; an exception that escapes the command is appended to stderr as a traceback,
which those assertions reject.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass

from typer.testing import CliRunner

from tests.cli_util import REPO


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def invoke_imp(*args: str, stdin: str | None = None, env: dict | None = None) -> Result:
    from imp_core.cli.app import app

    clean = {k: None for k in os.environ if k.startswith("IMP_")}
    clean["IMP_USER_CONFIG"] = str(REPO / "tests" / "no-such-user-config.toml")
    clean.update(env or {})
    res = CliRunner().invoke(app, list(args), input=stdin, env=clean)
    stderr = res.stderr
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        stderr += "Traceback (escaped the command):\n" + "".join(traceback.format_exception(res.exception))
    return Result(res.exit_code, res.stdout, stderr)
