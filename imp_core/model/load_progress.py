"""Weight-loading progress: a bar on a terminal, a few log lines anywhere else (a log file, CI)."""

from __future__ import annotations

import sys

from loguru import logger
from tqdm import tqdm

from imp_core.units import human_bytes

STEPS = 4  # log lines at 25%, 50%, 75% and 100%


class LoadProgress:
    def __init__(self, total: int, *, enabled: bool) -> None:
        self.total, self.done, self.logged = total, 0, 0
        isatty = getattr(sys.stderr, "isatty", None)
        tty = bool(isatty and isatty())
        self.bar = tqdm(total=total, unit="B", unit_scale=True, desc="loading weights", leave=False,
                        dynamic_ncols=True, disable=not (enabled and tty))
        self.log_lines = enabled and not tty and total > 0

    def update(self, nbytes: int) -> None:
        self.bar.update(nbytes)
        self.done += nbytes
        if not self.log_lines:
            return
        step = min(STEPS, self.done * STEPS // self.total)
        if step > self.logged:
            self.logged = step
            logger.info("loading weights: {}% ({} of {})", step * 100 // STEPS, human_bytes(self.done),
                        human_bytes(self.total))

    def close(self) -> None:
        self.bar.close()
