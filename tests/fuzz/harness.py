"""What every fuzz harness shares: the expected-error contract, limits, seeds and the atheris driver.

A harness feeds each input to a target that must either succeed or raise imp's own ``ImpError``;
any other exception escapes to atheris, which reports it as a crash with the input that caused
it. Address space is capped with ``RLIMIT_AS`` a fixed amount above what the imports took, so an
unbounded allocation ends as an uncaught ``MemoryError`` (a finding) instead of swapping; libFuzzer's
``-timeout`` bounds the time of one input and ``-rss_limit_mb`` the resident memory.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
from pathlib import Path
from typing import Callable

HEADROOM = 2 << 30  # address space allowed above the harness after its imports
DEFAULT_FLAGS = ["-timeout=10", "-rss_limit_mb=3072", "-max_len=65536", "-print_final_stats=1"]


def scratch_dir() -> Path:
    """A per-process directory for the files the targets open (in memory when /dev/shm exists)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    return Path(tempfile.mkdtemp(prefix="imp-fuzz-", dir=base))


def replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` as a new file (a new inode, so maps of the previous input stay valid)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def limit_address_space(headroom: int = HEADROOM) -> None:
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + headroom, vm + headroom))


def write_seeds(corpus: Path, seeds: dict[str, bytes]) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        (corpus / f"seed-{name}").write_bytes(data)


def main(target: Callable[[bytes], None], seeds: Callable[[], dict[str, bytes]]) -> None:
    """``python tests/fuzz/fuzz_X.py [libFuzzer flags] CORPUS_DIR``: seeds CORPUS_DIR, then fuzzes;
    given files instead of a directory, runs just those inputs (to reproduce a crash)."""
    import atheris

    args = sys.argv[1:]
    dirs = [a for a in args if not a.startswith("-")]
    if not dirs:
        sys.exit(f"usage: {sys.argv[0]} [libFuzzer flags] CORPUS_DIR | CRASH_FILE...")
    if not Path(dirs[0]).is_file():
        write_seeds(Path(dirs[0]), seeds())
    defaults = [*DEFAULT_FLAGS, f"-artifact_prefix={Path(dirs[0]).resolve()}-"]
    dictionary = Path(sys.argv[0]).with_name(Path(sys.argv[0]).stem.removeprefix("fuzz_") + ".dict")
    if dictionary.is_file():
        defaults.append(f"-dict={dictionary}")
    flags = [f for f in defaults if f.split("=")[0] not in {a.split("=")[0] for a in args}]
    limit_address_space()
    atheris.Setup([sys.argv[0], *flags, *args], target)
    atheris.Fuzz()
