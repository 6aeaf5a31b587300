"""Damaged safetensors headers and config.json files: one `error:` line naming the file, the tensor
or key and what was expected, exit status 2, before any tensor is read."""

from __future__ import annotations

import pytest

from imp_mistral.demo import write_demo_checkpoint
from tests.hostile_util import SHARD, assert_exit_2, copy_checkpoint, edit_header, read_header, write_header

Q = "language_model.model.layers.0.self_attn.q_proj.weight"
K = "language_model.model.layers.0.self_attn.k_proj.weight"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return write_demo_checkpoint(tmp_path_factory.mktemp("demo") / "demo")


def _info(ck, *needles):
    return assert_exit_2("info", "--model", str(ck), needles=(str(ck / SHARD), *needles))


def test_dtype_that_is_not_a_string(good, tmp_path):
    ck = edit_header(copy_checkpoint(good, tmp_path / "ck"), lambda h: h[Q].update(dtype=["F32"]))
    _info(ck, f"tensor '{Q}'", "dtype ['F32']", "expected a string")


@pytest.mark.parametrize("meta", [["format", "pt"], {"format": 1}, {"format": {"nested": "x"}}])
def test_metadata_that_is_not_an_object_of_strings(good, tmp_path, meta):
    ck = edit_header(copy_checkpoint(good, tmp_path / "ck"), lambda h: h.update(__metadata__=meta))
    _info(ck, "'__metadata__' must be an object of strings")


@pytest.mark.parametrize("field,value", [("shape", [384.0, 128]), ("shape", [10**30, 128]),
                                         ("data_offsets", [0.5, 98304]), ("data_offsets", [0, 1e400])])
def test_float_or_huge_shapes_and_offsets(good, tmp_path, field, value):
    ck = edit_header(copy_checkpoint(good, tmp_path / "ck"), lambda h: h[Q].update({field: value}))
    _info(ck, f"tensor '{Q}'")


def test_infinity_in_shape(good, tmp_path):
    ck = copy_checkpoint(good, tmp_path / "ck")
    header, data = read_header(ck / SHARD)
    text = __import__("json").dumps(header).replace('"shape": [128, 128]', '"shape": [Infinity, 128]', 1)
    assert "Infinity" in text
    write_header(ck / SHARD, text, data)
    _info(ck, "expected a list of non-negative integers")


def test_negative_shape_dimension(good, tmp_path):
    def negate(h):
        rows, cols = h[Q]["shape"]
        h[Q]["shape"] = [-rows, -cols]  # same element count, so only the sign can refuse it
    ck = edit_header(copy_checkpoint(good, tmp_path / "ck"), negate)
    _info(ck, f"tensor '{Q}'", "non-negative integers")
    assert_exit_2("run", "--model", str(ck), "-p", "x", needles=("non-negative integers",))


def test_overlapping_data_offsets(good, tmp_path):
    ck = edit_header(copy_checkpoint(good, tmp_path / "ck"),
                     lambda h: h[K].update(data_offsets=[h[Q]["data_offsets"][0] + 2,
                                                         h[Q]["data_offsets"][0] + 2 + h[K]["data_offsets"][1]
                                                         - h[K]["data_offsets"][0]]))
    _info(ck, "overlap")
    assert_exit_2("run", "--model", str(ck), "-p", "x", needles=("overlap", K))


def test_header_nested_100k_levels(good, tmp_path):
    ck = copy_checkpoint(good, tmp_path / "ck")
    header, data = read_header(ck / SHARD)
    deep = "[" * 100_000 + "]" * 100_000
    write_header(ck / SHARD, '{"__metadata__": ' + deep + "}", data)
    _info(ck, "nested too deeply")


def test_config_json_nested_100k_levels(good, tmp_path):
    ck = copy_checkpoint(good, tmp_path / "ck")
    (ck / "config.json").write_text('{"architectures": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert_exit_2("info", "--model", str(ck), needles=(str(ck / "config.json"), "nested too deeply"))


def test_config_json_nested_below_the_recursion_limit(good, tmp_path):
    ck = copy_checkpoint(good, tmp_path / "ck")
    (ck / "config.json").write_text('{"architectures": ' + "[" * 500 + "]" * 500 + "}")
    assert_exit_2("info", "--model", str(ck), needles=(str(ck / "config.json"), "nested more than 64 levels"))


def test_shard_index_naming_a_file_outside_the_directory(good, tmp_path):
    ck = copy_checkpoint(good, tmp_path / "ck")
    (ck / "model.safetensors.index.json").write_text('{"weight_map": {"a": "../../etc/passwd"}}')
    assert_exit_2("info", "--model", str(ck), needles=("model.safetensors.index.json", "../../etc/passwd"))


def test_empty_tensor_with_dims_too_large_to_index(good, tmp_path):
    ck = edit_header(copy_checkpoint(good, tmp_path / "ck"),
                     lambda h: h.update(empty={"dtype": "F32", "shape": [0, 2**62, 4], "data_offsets": [0, 0]}))
    _info(ck, "tensor 'empty'", "too large to index")
