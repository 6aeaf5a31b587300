"""HF safetensors directories: config.json + one or many shards (+ the shard index).

The header of every shard is parsed and validated here (so a truncated or corrupt file is an
error that names it before any tensor is read); tensor bytes are read lazily through a memory
map, one tensor at a time.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import torch

from imp_core.checkpoint.base import Checkpoint, MappedFiles, TensorInfo, dims_indexable
from imp_core.checkpoint.json_file import parse_json, read_json_object
from imp_core.errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
MAX_HEADER = 100 * 1024 * 1024

# safetensors dtype -> (torch dtype, bytes per element)
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2), "I64": (torch.int64, 8), "I32": (torch.int32, 4),
    "I16": (torch.int16, 2), "I8": (torch.int8, 1), "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1),
    "F8_E4M3": (torch.float8_e4m3fn, 1), "F8_E5M2": (torch.float8_e5m2, 1),
}


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """Parse one shard's header; return (header dict, absolute offset of the data section)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file (no header)")
            (n,) = struct.unpack("<Q", head)
            if n == 0 or n > MAX_HEADER or 8 + n > size:
                raise CheckpointError(f"{path}: corrupt or truncated safetensors header "
                                      f"(header length {n}, file size {size})")
            raw = f.read(n)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    header = parse_json(raw, str(path), "safetensors header (JSON)")
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    return header, 8 + n


def _is_count(x: Any) -> bool:
    return type(x) is int and x >= 0  # JSON true/false and floats are not counts


def _metadata(path: Path, meta: Any) -> dict[str, str]:
    if meta is None:
        return {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{path}: corrupt safetensors header: '__metadata__' must be an object of "
                              f"strings")
    return meta


def _entry(path: Path, name: str, entry: Any, data_size: int, data_start: int) -> TensorInfo:
    """One header entry, every field's type and range checked against the data section."""
    bad = f"{path}: corrupt safetensors header: tensor '{name}'"
    if not isinstance(entry, dict):
        raise CheckpointError(f"{bad} is not an object with dtype, shape and data_offsets")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise CheckpointError(f"{bad} has dtype {dtype!r}, expected a string such as \"BF16\"")
    if dtype not in DTYPES:
        raise CheckpointError(f"{path}: tensor '{name}' has unsupported dtype {dtype[:40]}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise CheckpointError(f"{bad} has shape {str(shape)[:80]}, expected a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(x) for x in offsets)
            or offsets[0] > offsets[1]):
        raise CheckpointError(f"{bad} has data_offsets {str(offsets)[:80]}, expected [begin, end] with "
                              f"0 <= begin <= end")
    if not dims_indexable(shape):
        raise CheckpointError(f"{bad} has shape {str(shape)[:80]}, too large to index")
    begin, end = offsets
    if end > data_size:
        raise CheckpointError(f"{path}: truncated safetensors file (tensor '{name}' ends at byte "
                              f"{data_start + end}, file has {data_start + data_size})")
    numel = 1
    for d in shape:
        numel *= d
        if numel > data_size:  # also bounds the product of absurd dimensions
            break
    if end - begin != numel * DTYPES[dtype][1]:
        raise CheckpointError(f"{path}: tensor '{name}' byte range [{begin}, {end}) does not match "
                              f"{dtype}{shape if len(shape) <= 8 else '[...]'}")
    return TensorInfo(name, dtype, tuple(shape), path, data_start + begin, end - begin)


def scan_shard(path: Path) -> tuple[dict[str, TensorInfo], dict[str, Any]]:
    """Every tensor of one shard, validated against the file's size and each other."""
    header, data_start = read_header(path)
    data_size = path.stat().st_size - data_start
    meta = _metadata(path, header.pop("__metadata__", None))
    out = {name: _entry(path, name, entry, data_size, data_start) for name, entry in header.items()}
    spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in out.values() if t.nbytes)
    for (_, end, name), (begin, _, other) in zip(spans, spans[1:]):
        if begin < end:
            raise CheckpointError(f"{path}: corrupt safetensors header: tensors '{name}' and '{other}' "
                                  f"overlap (data_offsets share bytes)")
    return out, meta


class SafetensorsReader(MappedFiles):
    """Reads tensors through one memory map per shard (opened on first use)."""

    def read(self, info: TensorInfo) -> torch.Tensor:
        torch_dtype, _ = DTYPES[info.dtype]
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=torch_dtype)
        buf = self._map(info.file)
        flat = torch.frombuffer(buf, dtype=torch.uint8, count=info.nbytes, offset=info.offset)
        if info.offset % flat.new_empty(0, dtype=torch_dtype).element_size():
            flat = flat.clone()  # misaligned for a zero-copy view of the wider dtype
        return flat.view(torch_dtype).reshape(info.shape)


def _shard_files(directory: Path) -> list[Path]:
    index = directory / INDEX_NAME
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: corrupt shard index (expected a 'weight_map' object of file names)")
        files = sorted(set(weight_map.values()))
        outside = [f for f in files if Path(f).name != f or not f.endswith(".safetensors")]
        if outside:
            raise CheckpointError(f"{index}: shard index names '{outside[0][:80]}', expected a .safetensors "
                                  f"file name in the checkpoint directory")
        paths = [directory / f for f in files]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise CheckpointError(f"{index}: lists shard(s) that are missing: {', '.join(missing)}")
        return paths
    files = sorted(directory.glob("*.safetensors"))
    # Mistral repos also ship a native consolidated.safetensors beside the HF shards; its names
    # and layouts differ, so it must never be mixed in.
    hf = [p for p in files if not p.name.startswith("consolidated")]
    return hf or files


def open_safetensors_dir(directory: Path) -> Checkpoint:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{directory}: not a checkpoint directory (no config.json)")
    config = read_json_object(config_path)
    shards = _shard_files(directory)
    if not shards:
        raise CheckpointError(f"{directory}: no .safetensors weight files found")
    tensors: dict[str, TensorInfo] = {}
    meta: dict[str, Any] = {}
    for shard in shards:
        found, shard_meta = scan_shard(shard)
        for name, info in found.items():
            if name in tensors:
                raise CheckpointError(f"{shard}: tensor '{name}' also appears in {tensors[name].file.name}")
            tensors[name] = info
        meta.update(shard_meta)
    return Checkpoint(path=directory, format="safetensors", config=config, tensors=tensors,
                      reader=SafetensorsReader(), metadata=meta)
