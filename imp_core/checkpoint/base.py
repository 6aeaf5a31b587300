"""The checkpoint abstraction: metadata first, tensor bytes only when asked."""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from imp_core.errors import CheckpointError


class MappedFiles:
    """One copy-on-write memory map per file, opened on first use: tensors can alias the map
    without copying, and nothing imp does ever writes back to the file."""

    def __init__(self) -> None:
        self._maps: dict[Path, mmap.mmap] = {}

    def _map(self, path: Path) -> mmap.mmap:
        m = self._maps.get(path)
        if m is None:
            with path.open("rb") as f:
                m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            self._maps[path] = m
        return m


MAX_INDEXABLE = 2**62  # torch's strides are int64


def dims_indexable(shape: tuple[int, ...] | list[int]) -> bool:
    """Whether torch can give ``shape`` strides; an empty tensor (a 0 dim) can still claim others
    too large to index."""
    strides = 1
    for d in shape:
        strides *= max(d, 1)
        if strides >= MAX_INDEXABLE:
            return False
    return True


@dataclass(frozen=True)
class TensorInfo:
    """Where one stored tensor lives and what it is, without its bytes."""

    name: str  # the name as stored in the file
    dtype: str  # the stored dtype, e.g. "BF16", "F8_E4M3", "U8", or a GGUF type name "Q4_K"
    shape: tuple[int, ...]  # the stored shape, torch order
    file: Path
    offset: int  # absolute byte offset of the data in ``file``
    nbytes: int


@dataclass
class Checkpoint:
    """A model checkpoint on disk (HF directory or GGUF file), opened lazily.

    ``tensors`` is keyed by the stored name. ``config`` is the parsed config.json (for GGUF, a
    config-like dict built from the metadata by the family plugin). ``reader`` fetches bytes.
    """

    path: Path
    format: str  # "safetensors" or "gguf"
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]
    reader: Any
    metadata: dict[str, Any] = field(default_factory=dict)  # GGUF key/values, safetensors __metadata__

    # -- spellings used to find the family --------------------------------------------
    @property
    def hf_architectures(self) -> list[str]:
        archs = self.config.get("architectures") or []
        return [a for a in archs if isinstance(a, str)]

    @property
    def model_types(self) -> list[str]:
        out = []
        for cfg in (self.config, self.config.get("text_config") or {}):
            mt = cfg.get("model_type") if isinstance(cfg, dict) else None
            if isinstance(mt, str) and mt not in out:
                out.append(mt)
        return out

    @property
    def gguf_architecture(self) -> str | None:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None

    @property
    def text_config(self) -> dict[str, Any]:
        """The text decoder's config: ``text_config`` of a multimodal wrapper, else the config."""
        tc = self.config.get("text_config")
        return tc if isinstance(tc, dict) else self.config

    # -- files beside the weights -------------------------------------------------------
    @property
    def directory(self) -> Path:
        return self.path if self.path.is_dir() else self.path.parent

    def has_file(self, name: str) -> bool:
        return self.format == "safetensors" and (self.directory / name).is_file()

    def read_json(self, name: str) -> dict[str, Any] | None:
        """A JSON file beside the weights, or None if absent; a corrupt one is an error."""
        if not self.has_file(name):
            return None
        from imp_core.checkpoint.json_file import read_json_object

        return read_json_object(self.directory / name)

    # -- tensors ------------------------------------------------------------------------
    def read(self, name: str) -> torch.Tensor:
        """The stored tensor (on the CPU, stored dtype; raw bytes for block-quantized GGUF)."""
        try:
            info = self.tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: no tensor named '{name}'") from None
        return self.reader.read(info)

    def __iter__(self) -> Iterator[TensorInfo]:
        return iter(self.tensors.values())

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())
