"""GGUF files (one file or ``*-0000N-of-0000M.gguf`` splits), read with the gguf package.

Metadata (key/values and tensor infos) is parsed by ``gguf.GGUFReader`` and validated here
against the file size before any tensor is read: bad magic, a truncated file, a tensor whose
byte range overruns the file or overlaps the next tensor, a row length that is not a multiple
of its type's block, and an unknown type id are all one-line ``CheckpointError``s naming the
file and tensor. Tensors are then read through one memory map per file: F32/F16/BF16 (and the
integer types) as typed tensors, block-quantized types as raw uint8 ``[rows, bytes per row]``.
Shapes are in torch order (GGUF's ``ne`` reversed). The per-tensor type always comes from the
tensor info, never from ``general.file_type``.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imp_core.checkpoint.base import Checkpoint, MappedFiles, TensorInfo
from imp_core.errors import CheckpointError

GGUF_MAGIC = b"GGUF"
SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)

# GGUF types stored as plain arrays -> torch dtype
PLAIN_TYPES: dict[str, torch.dtype] = {
    "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
    "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
}
FLOAT_TYPES = ("F32", "F16", "BF16", "F64")


def _field_value(field: Any) -> Any:
    value = field.contents()
    if isinstance(value, np.generic):
        value = value.item()
    return value


def _check_magic(path: Path) -> None:
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(head) < 4 or size < 24:
        raise CheckpointError(f"{path}: truncated GGUF file ({size} bytes, no header)")
    if head != GGUF_MAGIC:
        raise CheckpointError(f"{path}: not a GGUF file (magic {head!r}, expected b'GGUF')")


def read_gguf_file(path: Path) -> tuple[dict[str, Any], dict[str, TensorInfo]]:
    """(metadata key -> value, stored name -> TensorInfo) of one GGUF file, validated."""
    from gguf import GGML_QUANT_SIZES, GGUFReader

    _check_magic(path)
    size = path.stat().st_size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = GGUFReader(path, "r")
    except ValueError as exc:
        msg = " ".join(str(exc).split())
        if "is not a valid GGMLQuantizationType" in msg:
            raise CheckpointError(f"{path}: a tensor has an unknown GGUF type id ({msg})") from None
        if "cannot reshape" in msg or "out of bounds" in msg or "mmap length" in msg:
            raise CheckpointError(f"{path}: truncated or corrupt GGUF file ({msg})") from None
        raise CheckpointError(f"{path}: corrupt GGUF file ({msg})") from None
    except (IndexError, OverflowError, UnicodeDecodeError, KeyError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt GGUF metadata ({type(exc).__name__}: {exc})") from None
    metadata = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        try:
            metadata[name] = _field_value(field)
        except (UnicodeDecodeError, IndexError) as exc:
            raise CheckpointError(f"{path}: metadata key '{name}' is corrupt ({exc})") from None
    tensors: dict[str, TensorInfo] = {}
    spans = []
    for t in reader.tensors:
        qtype = t.tensor_type.name
        block, type_size = GGML_QUANT_SIZES[t.tensor_type]
        ne = [int(d) for d in t.shape]
        if ne and ne[0] % block:
            raise CheckpointError(f"{path}: tensor '{t.name}' of type {qtype} has row length {ne[0]}, "
                                  f"not a multiple of its block size {block}")
        nbytes = int(np.prod(ne, dtype=np.int64)) // block * type_size
        offset = int(t.data_offset)
        if offset + nbytes > size:
            raise CheckpointError(f"{path}: truncated GGUF file (tensor '{t.name}' ({qtype}, shape "
                                  f"{list(reversed(ne))}) ends at byte {offset + nbytes}, file has {size})")
        spans.append((offset, nbytes, t.name, qtype, ne))
        tensors[t.name] = TensorInfo(t.name, qtype, tuple(reversed(ne)), path, offset, nbytes)
    spans.sort()
    for (off, n, name, qtype, ne), (next_off, _, next_name, _, _) in zip(spans, spans[1:]):
        if off + n > next_off:
            raise CheckpointError(f"{path}: tensor '{name}' ({qtype}, shape {list(reversed(ne))}, "
                                  f"{n} bytes) overlaps '{next_name}' at byte {next_off}: its byte size "
                                  f"does not match its type and shape")
    return metadata, tensors


class GGUFTensorReader(MappedFiles):
    """Reads GGUF tensors through one copy-on-write memory map per file."""

    def read(self, info: TensorInfo) -> torch.Tensor:
        """The tensor as stored: typed for plain types, uint8 [..., bytes per row] for blocks."""
        flat = torch.frombuffer(self._map(info.file), dtype=torch.uint8, count=info.nbytes,
                                offset=info.offset) if info.nbytes else torch.empty(0, dtype=torch.uint8)
        if info.dtype in PLAIN_TYPES:
            dt = PLAIN_TYPES[info.dtype]
            if info.offset % flat.new_empty(0, dtype=dt).element_size():
                flat = flat.clone()
            return flat.view(dt).reshape(info.shape)
        rows = int(np.prod(info.shape[:-1], dtype=np.int64)) if len(info.shape) > 1 else 1
        return flat.reshape(*info.shape[:-1], info.nbytes // max(rows, 1))


def split_files(path: Path) -> list[Path]:
    """Every file of a split GGUF (first to last), or ``[path]`` for a single file."""
    m = SPLIT_RE.match(path.name)
    if not m:
        return [path]
    count = int(m["count"])
    files = [path.with_name(f"{m['prefix']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{path}: split GGUF is missing part(s): {', '.join(missing)}")
    return files


def open_gguf(path: Path) -> Checkpoint:
    """Open a GGUF checkpoint (any part of a split set opens the whole set), metadata only."""
    files = split_files(Path(path))
    metadata: dict[str, Any] = {}
    tensors: dict[str, TensorInfo] = {}
    for i, file in enumerate(files):
        meta, found = read_gguf_file(file)
        if len(files) > 1:
            no = meta.get("split.no")
            if no is not None and int(no) != i:
                raise CheckpointError(f"{file}: split.no is {no}, expected {i} from its file name")
            if meta.get("split.count") is not None and int(meta["split.count"]) != len(files):
                raise CheckpointError(f"{file}: split.count is {meta['split.count']}, but the file "
                                      f"names say {len(files)}")
        if i == 0:
            metadata = meta
        for name, info in found.items():
            if name in tensors:
                raise CheckpointError(f"{file}: tensor '{name}' also appears in {tensors[name].file.name}")
            tensors[name] = info
    expected = metadata.get("split.tensors.count")
    if expected is not None and int(expected) != len(tensors):
        raise CheckpointError(f"{files[0]}: split.tensors.count is {expected}, but the parts hold "
                              f"{len(tensors)} tensors")
    if "general.architecture" not in metadata:
        raise CheckpointError(f"{files[0]}: GGUF metadata has no 'general.architecture'")
    return Checkpoint(path=files[0], format="gguf", config={}, tensors=tensors,
                      reader=GGUFTensorReader(), metadata=metadata)
