"""Configs that disagree with their tensors, or ask for absurd sizes: refused before (or, for
per-tensor shapes, while) the weights are read, in one line naming the tensor, both shapes and
the config key; a run that cannot fit in memory is refused with the planned and free bytes."""

from __future__ import annotations

import pytest
import torch

from imp_core.errors import CheckpointError
from imp_core.model.synthetic import SyntheticWeights
from imp_mistral.demo import write_demo_checkpoint
from tests.hostile_util import SHARD, assert_exit_2, copy_checkpoint, edit_header, edit_text_config


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return write_demo_checkpoint(tmp_path_factory.mktemp("demo") / "demo")


def test_vocab_size_larger_than_the_embedding(good, tmp_path):
    ck = edit_text_config(copy_checkpoint(good, tmp_path / "ck"), vocab_size=600)
    line = assert_exit_2("run", "--model", str(ck), "-p", "x",
                         needles=("config key 'vocab_size' is 600", "embed_tokens.weight", "512 rows"))
    assert "loading weights" not in line


def test_intermediate_size_that_does_not_match_the_tensors(good, tmp_path):
    ck = edit_text_config(copy_checkpoint(good, tmp_path / "ck"), intermediate_size=200)
    assert_exit_2("run", "--model", str(ck), "-p", "x",
                  needles=("mlp.gate_proj.weight", "shape [384, 128]", "expected [200, 128]", "intermediate_size"))


def test_embedding_stored_3d(good, tmp_path):
    emb = "language_model.model.embed_tokens.weight"
    ck = edit_header(copy_checkpoint(good, tmp_path / "ck"), lambda h: h[emb].update(shape=[512, 64, 2]))
    assert_exit_2("run", "--model", str(ck), "-p", "x", needles=(emb, "[512, 64, 2]", "expected 2 dims"))


def test_vocab_size_1e11(good, tmp_path):
    ck = edit_text_config(copy_checkpoint(good, tmp_path / "ck"), vocab_size=100_000_000_000)
    assert_exit_2("run", "--model", str(ck), "-p", "x",
                  needles=("config.json", "'vocab_size' is 100000000000", "expected 0..2147483647"))


def test_context_1e11_is_refused_by_the_memory_plan(good):
    line = assert_exit_2("run", "--model", str(good), "-p", "x", "--context", "100000000000",
                         needles=("not enough memory on cpu", "planned", "free", "context 100000000000",
                                  "runtime.context (--context)"))
    assert "TiB" in line


def test_info_shows_the_memory_plan(good):
    from tests.cli_inproc import invoke_imp

    proc = invoke_imp("info", "--model", str(good))
    assert proc.returncode == 0, proc.stderr
    memory = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("memory")]
    assert len(memory) == 1 and "planned" in memory[0] and "free on cpu" in memory[0], proc.stdout


@pytest.mark.parametrize("changes,needles", [
    ({"num_attention_heads": 0}, ("'num_attention_heads'", "greater than 0")),
    ({"num_key_value_heads": 3}, ("num_attention_heads must be a multiple of num_key_value_heads",)),
    ({"num_hidden_layers": 10**9}, ("'num_hidden_layers' is 1000000000", "expected 0..4096")),
    ({"hidden_size": "wide"}, ("'hidden_size' is 'wide'", "expected an integer")),
])
def test_config_values_validated_at_parse(good, tmp_path, changes, needles):
    ck = edit_text_config(copy_checkpoint(good, tmp_path / "ck"), **changes)
    assert_exit_2("info", "--model", str(ck), needles=(str(ck / "config.json"), *needles))


def _family_case(family: str):
    if family == "qwen36":
        from imp_qwen36.family import Qwen36Family
        from tests.qwen36_factory import MOE, TEXT

        return Qwen36Family(), {**TEXT, **MOE, "model_type": "qwen3_5_moe_text"}, "moe_intermediate_size"
    from imp_gemma4.family import Gemma4Family
    from tests.gemma4_factory import TEXT

    return Gemma4Family(), dict(TEXT), "intermediate_size"


@pytest.mark.parametrize("family", ["qwen36", "gemma4"])
def test_every_family_checks_intermediate_size_against_the_tensors(family):
    fam, data, key = _family_case(family)
    written = fam.config_from_dict(data)
    claimed = fam.config_from_dict({**data, key: getattr(written, key) + 8})
    weights = SyntheticWeights(fam.synthetic_spec(written), device=torch.device("cpu"), dtype=torch.float32,
                               progress=False)
    weights.config = claimed
    with pytest.raises(CheckpointError) as info:
        fam.build(claimed, weights)
    msg = str(info.value)
    want, have = getattr(claimed, key), getattr(written, key)
    assert "\n" not in msg and "has shape" in msg and "expected [" in msg and key in msg, msg


def test_shard_shape_negative_is_not_read(good, tmp_path):
    """The load-time getter never sees a negative dimension: the reader refused it first."""
    q = "language_model.model.layers.1.self_attn.q_proj.weight"
    ck = edit_header(copy_checkpoint(good, tmp_path / "ck"), lambda h: h[q].update(shape=[-128, -128]))
    assert_exit_2("run", "--model", str(ck), "-p", "x", needles=(str(ck / SHARD), q))
