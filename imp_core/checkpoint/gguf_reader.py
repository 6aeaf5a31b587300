"""GGUF files (one file or ``*-0000N-of-0000M.gguf`` splits).

Metadata (key/values and tensor infos) is parsed by ``imp_core.checkpoint.gguf_parse``, which
bounds every count by the bytes left in the file, and validated here against the file size
before any tensor is read: bad magic, a truncated file, a tensor whose
byte range overruns the file or overlaps the next tensor, a row length that is not a multiple
of its type's block, and an unknown type id are all one-line ``CheckpointError``s naming the
file and tensor. Tensors are then read through one memory map per file: F32/F16/BF16 (and the
integer types) as typed tensors, block-quantized types as raw uint8 ``[rows, bytes per row]``.
Shapes are in torch order (GGUF's ``ne`` reversed). The per-tensor type always comes from the
tensor info, never from ``general.file_type``.
"""

from __future__ import annotations

import math
import mmap
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imp_core.checkpoint.base import Checkpoint, MappedFiles, TensorInfo, dims_indexable
from imp_core.checkpoint.gguf_parse import RawTensorInfo, parse_gguf
from imp_core.errors import CheckpointError

SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)

# GGUF types stored as plain arrays -> torch dtype
PLAIN_TYPES: dict[str, torch.dtype] = {
    "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
    "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
}
FLOAT_TYPES = ("F32", "F16", "BF16", "F64")


def _map_file(path: Path) -> mmap.mmap | bytes:
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return b""
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None


def _tensor_type(path: Path, raw: RawTensorInfo) -> tuple[str, int, int]:
    """(type name, elements per block, bytes per block) of a tensor's GGML type id."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        qtype = GGMLQuantizationType(raw.type_id)
        block, type_size = GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise CheckpointError(f"{path}: tensor '{raw.name}' has an unknown GGUF type id {raw.type_id}") from None
    return qtype.name, block, type_size


def read_gguf_file(path: Path) -> tuple[dict[str, Any], dict[str, TensorInfo]]:
    """(metadata key -> value, stored name -> TensorInfo) of one GGUF file, validated."""
    buf = _map_file(path)
    try:
        contents = parse_gguf(buf, path)
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()
    size = len(buf) if isinstance(buf, bytes) else path.stat().st_size
    tensors: dict[str, TensorInfo] = {}
    spans = []
    for raw in contents.tensors:
        if raw.name in tensors:
            raise CheckpointError(f"{path}: tensor '{raw.name}' appears twice")
        qtype, block, type_size = _tensor_type(path, raw)
        ne = list(raw.ne)
        shape = list(reversed(ne))
        row = ne[0] if ne else 1
        if row % block:
            raise CheckpointError(f"{path}: tensor '{raw.name}' of type {qtype} has row length {row}, "
                                  f"not a multiple of its block size {block}")
        if not dims_indexable(ne):
            raise CheckpointError(f"{path}: tensor '{raw.name}' has shape {shape}, too large to index")
        numel = math.prod(ne)
        nbytes = numel // block * type_size
        offset = contents.data_start + raw.offset
        if offset + nbytes > size:
            raise CheckpointError(f"{path}: truncated GGUF file (tensor '{raw.name}' ({qtype}, shape "
                                  f"{shape}) ends at byte {offset + nbytes}, file has {size})")
        spans.append((offset, nbytes, raw.name, qtype, shape))
        tensors[raw.name] = TensorInfo(raw.name, qtype, tuple(shape), path, offset, nbytes)
    spans.sort()
    for (off, n, name, qtype, shape), (next_off, _, next_name, _, _) in zip(spans, spans[1:]):
        if off + n > next_off:
            raise CheckpointError(f"{path}: tensor '{name}' ({qtype}, shape {shape}, {n} bytes) overlaps "
                                  f"'{next_name}' at byte {next_off}: its byte size does not match its "
                                  f"type and shape")
    return contents.metadata, tensors


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


def _split_count(meta: dict[str, Any], key: str, file: Path) -> int | None:
    """An integer split key (``split.no``, ``split.count``, ``split.tensors.count``), or None."""
    value = meta.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointError(f"{file}: GGUF metadata '{key}' is {value!r}, expected a non-negative integer")
    return value


def open_gguf(path: Path) -> Checkpoint:
    """Open a GGUF checkpoint (any part of a split set opens the whole set), metadata only."""
    files = split_files(Path(path))
    metadata: dict[str, Any] = {}
    tensors: dict[str, TensorInfo] = {}
    for i, file in enumerate(files):
        meta, found = read_gguf_file(file)
        no, count = _split_count(meta, "split.no", file), _split_count(meta, "split.count", file)
        if len(files) > 1:
            if no is not None and no != i:
                raise CheckpointError(f"{file}: split.no is {no}, expected {i} from its file name")
            if count is not None and count != len(files):
                raise CheckpointError(f"{file}: split.count is {count}, but the file names say {len(files)}")
        if i == 0:
            metadata = meta
        for name, info in found.items():
            if name in tensors:
                raise CheckpointError(f"{file}: tensor '{name}' also appears in {tensors[name].file.name}")
            tensors[name] = info
    expected = _split_count(metadata, "split.tensors.count", files[0])
    if expected is not None and expected != len(tensors):
        raise CheckpointError(f"{files[0]}: split.tensors.count is {expected}, but the parts hold "
                              f"{len(tensors)} tensors")
    arch = metadata.get("general.architecture")
    if arch is None:
        raise CheckpointError(f"{files[0]}: GGUF metadata has no 'general.architecture'")
    if not isinstance(arch, str):
        raise CheckpointError(f"{files[0]}: GGUF metadata 'general.architecture' is {arch!r}, expected a string")
    return Checkpoint(path=files[0], format="gguf", config={}, tensors=tensors,
                      reader=GGUFTensorReader(), metadata=metadata)
