"""HF safetensors directories: config.json + one or many shards (+ the shard index).

The header of every shard is parsed and validated here (so a truncated or corrupt file is an
error that names it before any tensor is read); tensor bytes are read lazily through a memory
map, one tensor at a time.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch

from imp_core.checkpoint.base import Checkpoint, MappedFiles, TensorInfo
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
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    return header, 8 + n


def scan_shard(path: Path) -> tuple[dict[str, TensorInfo], dict[str, Any]]:
    """Every tensor of one shard, validated against the file's size."""
    header, data_start = read_header(path)
    size = path.stat().st_size
    meta = header.pop("__metadata__", None) or {}
    out: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            dtype = entry["dtype"]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt safetensors header entry for '{name}'") from None
        if dtype not in DTYPES:
            raise CheckpointError(f"{path}: tensor '{name}' has unsupported dtype {dtype}")
        numel = 1
        for d in shape:
            numel *= d
        if end - begin != numel * DTYPES[dtype][1] or begin < 0:
            raise CheckpointError(f"{path}: tensor '{name}' byte range does not match "
                                  f"{dtype}{list(shape)}")
        if data_start + end > size:
            raise CheckpointError(f"{path}: truncated safetensors file (tensor '{name}' ends at byte "
                                  f"{data_start + end}, file has {size})")
        out[name] = TensorInfo(name, dtype, shape, path, data_start + begin, end - begin)
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
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
            weight_map = data["weight_map"]
            files = sorted({str(v) for v in weight_map.values()})
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise CheckpointError(f"{index}: corrupt shard index (expected a 'weight_map' object)") from None
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
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config_path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object")
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
