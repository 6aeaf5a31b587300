"""A short run of each fuzz harness (about a minute in all): imp's own errors only, no crash, no
hang, bounded memory. The longer run is described in docs/fuzzing.md."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.cli_util import REPO

SECONDS = {"safetensors": 12, "gguf": 12, "settings": 8}


@pytest.mark.parametrize("reader", sorted(SECONDS))
def test_fuzz_harness_short_run(reader, tmp_path):
    corpus = tmp_path / "corpus"
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "fuzz" / f"fuzz_{reader}.py"),
                           f"-max_total_time={SECONDS[reader]}", "-seed=1", str(corpus)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=SECONDS[reader] + 120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "Uncaught Python exception" not in out
    assert len(list(corpus.iterdir())) > 3  # the seeds, and inputs that reached new code
    runs = int(next(ln for ln in out.splitlines() if "stat::number_of_executed_units" in ln).split()[-1])
    assert runs > 1000, out[-2000:]
