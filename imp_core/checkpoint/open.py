"""Open a checkpoint path: an HF directory or a (possibly split) GGUF file."""

from __future__ import annotations

from pathlib import Path

from imp_core.checkpoint.base import Checkpoint
from imp_core.errors import CheckpointError


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open ``path`` lazily (metadata only). Errors name the path and what was expected."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory")
    if p.is_dir():
        from imp_core.checkpoint.safetensors_reader import open_safetensors_dir

        return open_safetensors_dir(p)
    if p.suffix.lower() == ".gguf":
        try:
            from imp_core.checkpoint.gguf_reader import open_gguf
        except ImportError:
            raise CheckpointError(f"{p}: GGUF checkpoints are not supported by this build") from None
        return open_gguf(p)
    raise CheckpointError(f"{p}: expected a checkpoint directory (config.json + *.safetensors) "
                          f"or a .gguf file")
