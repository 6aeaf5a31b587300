"""A closed stdout pipe ends imp quietly, as it ends any Unix filter."""

from __future__ import annotations

import os
import signal
import sys

EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a process killed by SIGPIPE


def quiet_broken_pipe() -> int:
    """Point stdout at /dev/null so the exit-time flush cannot fail again; return the exit code."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (tests)
        pass
    return EXIT_BROKEN_PIPE
