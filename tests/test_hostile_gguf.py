"""Damaged GGUF files: counts and lengths checked against the bytes left before anything is
allocated, metadata types checked before a family reads them, errors in imp's own words."""

from __future__ import annotations

import struct
import time
import tracemalloc

import pytest

from imp_core.checkpoint.open import open_checkpoint
from imp_core.errors import CheckpointError
from tests.fuzz.gguf_seeds import tiny_gguf
from tests.hostile_util import assert_exit_2

UINT32, INT32, ARRAY = 4, 5, 9


def _string(s: str) -> bytes:
    return struct.pack("<Q", len(s)) + s.encode()


def huge_array_gguf(key: str, item_type: int, count: int = 2**40) -> bytes:
    """A GGUF v3 header with no tensors and one array that claims ``count`` items and holds none."""
    return (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _string(key)
            + struct.pack("<IIQ", ARRAY, item_type, count))


def _open_bounded(path) -> str:
    """Open ``path``, expecting a CheckpointError; fail if it takes >2 s or allocates >1 MiB."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(CheckpointError) as info:
            open_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 2 and peak < 1 << 20, (time.perf_counter() - start, peak)
    return str(info.value)


def test_49_byte_file_claiming_2_40_items_fails_fast(tmp_path):
    path = tmp_path / "huge.gguf"
    path.write_bytes(huge_array_gguf("k", UINT32))
    assert path.stat().st_size == 49
    msg = _open_bounded(path)
    assert "array 'k' claims 1099511627776 items of 4 bytes" in msg and "bytes are left" in msg
    assert_exit_2("info", "--model", str(path), needles=(str(path), "array 'k' claims 1099511627776 items"))


def test_token_type_array_of_2_40(tmp_path):
    path = tmp_path / "tt.gguf"
    path.write_bytes(huge_array_gguf("tokenizer.ggml.token_type", INT32))
    _open_bounded(path)
    assert_exit_2("run", "--model", str(path), "-p", "x", needles=(str(path), "tokenizer.ggml.token_type"))


def test_string_array_and_string_length_beyond_the_file(tmp_path):
    path = tmp_path / "strings.gguf"
    path.write_bytes(huge_array_gguf("tokenizer.ggml.tokens", 8))
    assert "claims 1099511627776 strings" in _open_bounded(path)
    long_key = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**62) + b"abc"
    path.write_bytes(long_key + b"\0" * 16)
    assert "metadata key #0" in _open_bounded(path)


def test_header_counts_beyond_the_file(tmp_path):
    path = tmp_path / "counts.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**60, 0) + b"\0" * 8)
    assert "header claims 1152921504606846976 tensors" in _open_bounded(path)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 2**60) + b"\0" * 8)
    assert "header claims 1152921504606846976 metadata keys" in _open_bounded(path)


@pytest.mark.parametrize("value", ["three", -1, 2.5])
def test_split_tensors_count_of_the_wrong_type(tmp_path, value):
    path = tmp_path / "split.gguf"
    path.write_bytes(tiny_gguf("llama", {"split.tensors.count": value}))
    assert_exit_2("info", "--model", str(path), needles=(str(path), "split.tensors.count", "non-negative integer"))


def test_block_count_as_a_string(tmp_path):
    path = tmp_path / "blocks.gguf"
    path.write_bytes(tiny_gguf("llama", {"llama.block_count": "2"}))
    assert_exit_2("info", "--model", str(path),
                  needles=(str(path), "'llama.block_count' is '2'", "expected a positive integer"))


@pytest.mark.parametrize("arch", ["llama", "qwen35", "gemma4"])
def test_head_count_zero(tmp_path, arch):
    path = tmp_path / "heads.gguf"
    path.write_bytes(tiny_gguf(arch, {f"{arch}.attention.head_count": 0}))
    assert_exit_2("info", "--model", str(path),
                  needles=(str(path), f"'{arch}.attention.head_count' is 0", "expected a positive integer"))


def test_every_truncation_is_one_line_in_imps_words(tmp_path):
    """Cut a valid file at every length: each is refused with one line and no numpy text."""
    data = tiny_gguf("llama")
    path = tmp_path / "cut.gguf"
    for n in range(len(data)):
        path.write_bytes(data[:n])
        try:
            open_checkpoint(path)
        except CheckpointError as exc:
            msg = str(exc)
            assert "\n" not in msg and str(path) in msg, msg
            for numpy_text in ("larger dtype", "reshape", "array of size", "mmap length", "buffer"):
                assert numpy_text not in msg, (n, msg)
        else:  # only a cut inside the padding after the last tensor can still be a whole file
            assert n >= len(data) - 32, n


def test_unknown_value_and_tensor_types(tmp_path):
    path = tmp_path / "types.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _string("k") + struct.pack("<I", 99) + b"\0" * 8)
    assert "'k' has unknown value type 99" in _open_bounded(path)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + _string("t") + struct.pack("<IQIQ", 1, 32, 777, 0)
                     + b"\0" * 64)
    assert "tensor 't' has an unknown GGUF type id 777" in _open_bounded(path)


def test_big_endian_or_unknown_version(tmp_path):
    path = tmp_path / "v.gguf"
    path.write_bytes(b"GGUF" + struct.pack(">IQQ", 3, 0, 0))
    assert "GGUF version 50331648 is not supported (a big-endian file?)" in _open_bounded(path)


def test_empty_tensor_with_dims_too_large_to_index(tmp_path):
    path = tmp_path / "dims.gguf"
    info = _string("t") + struct.pack("<I", 3) + struct.pack("<QQQ", 0, 2**40, 2**40) + struct.pack("<IQ", 0, 0)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + info + b"\0" * 64)
    assert "tensor 't' has shape [1099511627776, 1099511627776, 0], too large to index" in _open_bounded(path)
