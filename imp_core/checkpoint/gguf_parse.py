"""A bounded parser for the GGUF header, metadata and tensor-info section.

The file comes from the internet, so every count and length is checked against the bytes left
in the file *before* anything is allocated or looped over: a 49-byte file that claims an array
of 2**40 items is refused at once, in memory proportional to the file. Errors are one-line
``CheckpointError``s naming the file, the key or tensor, and what was expected.

Layout (little-endian, versions 2 and 3): magic ``GGUF``, u32 version, u64 tensor count, u64
key/value count; each key/value is a string key, a u32 value type and the value (an array is a
u32 item type, a u64 count and the items; strings are a u64 length and UTF-8 bytes); each
tensor info is a string name, u32 number of dims, u64 dims (innermost first), u32 type and u64
offset into the data section, which starts at the next multiple of ``general.alignment``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imp_core.errors import CheckpointError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
DEFAULT_ALIGNMENT = 32

# value type id -> (name, struct format or None for string/array)
SCALARS: dict[int, tuple[str, str]] = {
    0: ("uint8", "<B"), 1: ("int8", "<b"), 2: ("uint16", "<H"), 3: ("int16", "<h"),
    4: ("uint32", "<I"), 5: ("int32", "<i"), 6: ("float32", "<f"), 7: ("bool", "<B"),
    10: ("uint64", "<Q"), 11: ("int64", "<q"), 12: ("float64", "<d"),
}
STRING, ARRAY = 8, 9
NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 10: "<u8", 11: "<i8", 12: "<f8"}

# the smallest encoding of one key/value (empty key, type, one byte) and one tensor info
MIN_KV_BYTES = 8 + 4 + 1
MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8


@dataclass(frozen=True)
class RawTensorInfo:
    name: str
    ne: tuple[int, ...]  # GGUF order: innermost dimension first
    type_id: int
    offset: int  # relative to the data section


@dataclass(frozen=True)
class GGUFContents:
    version: int
    metadata: dict[str, Any]
    tensors: list[RawTensorInfo]
    data_start: int  # absolute offset of the data section


class _Cursor:
    """Reads little-endian values from a buffer, refusing to step past its end."""

    def __init__(self, buf: Any, path: Path) -> None:
        self.buf, self.pos, self.size, self.path = buf, 0, len(buf), path

    @property
    def left(self) -> int:
        return self.size - self.pos

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: corrupt GGUF file: {what}")

    def need(self, n: int, what: str) -> None:
        if n > self.left:
            raise self.fail(f"{what} needs {n} bytes at offset {self.pos}, but only {self.left} are left")

    def unpack(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self, what: str) -> str:
        n = self.unpack("<Q", f"the length of {what}")
        self.need(n, f"{what} ({n} bytes)")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8") from None


def _value(cur: _Cursor, type_id: int, key: str) -> Any:
    if type_id in SCALARS:
        name, fmt = SCALARS[type_id]
        v = cur.unpack(fmt, f"the {name} value of '{key}'")
        return bool(v) if type_id == 7 else v
    if type_id == STRING:
        return cur.string(f"the string value of '{key}'")
    if type_id == ARRAY:
        return _array(cur, key)
    raise cur.fail(f"metadata key '{key}' has unknown value type {type_id} (expected 0..12)")


def _array(cur: _Cursor, key: str) -> list[Any]:
    item = cur.unpack("<I", f"the item type of array '{key}'")
    count = cur.unpack("<Q", f"the item count of array '{key}'")
    if item == ARRAY:
        raise cur.fail(f"metadata key '{key}' is an array of arrays (not supported)")
    if item in NUMPY or item == 7:
        size = 1 if item == 7 else np.dtype(NUMPY[item]).itemsize
        if count * size > cur.left:
            raise cur.fail(f"array '{key}' claims {count} items of {size} bytes, but only {cur.left} "
                           f"bytes are left in the file")
        dtype = "<u1" if item == 7 else NUMPY[item]
        values = np.frombuffer(cur.buf, dtype=dtype, count=count, offset=cur.pos)
        cur.pos += count * size
        return (values != 0).tolist() if item == 7 else values.tolist()
    if item == STRING:
        if count * 8 > cur.left:  # every string needs at least its 8-byte length
            raise cur.fail(f"array '{key}' claims {count} strings, but only {cur.left} bytes are left "
                           f"in the file")
        return [cur.string(f"item {i} of '{key}'") for i in range(count)]
    raise cur.fail(f"array '{key}' has unknown item type {item} (expected 0..12)")


def _alignment(metadata: dict[str, Any], cur: _Cursor) -> int:
    align = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if isinstance(align, bool) or not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise cur.fail(f"general.alignment is {align!r}, expected a positive power of two")
    return align


def _tensor_info(cur: _Cursor, index: int) -> RawTensorInfo:
    name = cur.string(f"the name of tensor #{index}")
    n_dims = cur.unpack("<I", f"the number of dims of tensor '{name}'")
    if n_dims > MAX_DIMS:
        raise cur.fail(f"tensor '{name}' has {n_dims} dims (at most {MAX_DIMS})")
    ne = tuple(cur.unpack("<Q", f"dim {d} of tensor '{name}'") for d in range(n_dims))
    type_id = cur.unpack("<I", f"the type of tensor '{name}'")
    offset = cur.unpack("<Q", f"the data offset of tensor '{name}'")
    return RawTensorInfo(name, ne, type_id, offset)


def parse_gguf(buf: Any, path: Path) -> GGUFContents:
    """Header, metadata and tensor infos of the GGUF bytes ``buf`` (a bytes-like or mmap)."""
    cur = _Cursor(buf, path)
    if cur.size < 24:
        raise CheckpointError(f"{path}: truncated GGUF file ({cur.size} bytes, no header)")
    magic = bytes(buf[:4])
    if magic != MAGIC:
        raise CheckpointError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
    cur.pos = 4
    version = cur.unpack("<I", "the version")
    if version not in VERSIONS:
        hint = " (a big-endian file?)" if version >> 16 else ""
        raise CheckpointError(f"{path}: GGUF version {version} is not supported{hint} "
                              f"(expected {' or '.join(map(str, VERSIONS))})")
    n_tensors = cur.unpack("<Q", "the tensor count")
    n_kv = cur.unpack("<Q", "the metadata count")
    if n_kv * MIN_KV_BYTES > cur.left:
        raise cur.fail(f"header claims {n_kv} metadata keys, but only {cur.left} bytes are left")
    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}")
        type_id = cur.unpack("<I", f"the value type of '{key}'")
        if key in metadata:
            raise cur.fail(f"metadata key '{key}' appears twice")
        metadata[key] = _value(cur, type_id, key)
    if n_tensors * MIN_TENSOR_INFO_BYTES > cur.left:
        raise cur.fail(f"header claims {n_tensors} tensors, but only {cur.left} bytes are left")
    tensors = [_tensor_info(cur, i) for i in range(n_tensors)]
    align = _alignment(metadata, cur)
    data_start = -(-cur.pos // align) * align
    return GGUFContents(version, metadata, tensors, data_start)
