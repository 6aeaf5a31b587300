"""Gemma-4 config parsing: the per-layer view, both spellings, refusals, RoPE, names, cache sizes.

The per-layer view and the RoPE tables are checked against transformers' own config and rotary
classes (an independent reading of the same config), at the real 26B-A4B shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from imp_core.checkpoint.base import Checkpoint
from imp_core.checkpoint.names import normalize_name
from imp_core.checkpoint.open import open_checkpoint
from imp_core.errors import CheckpointError, ImpError
from imp_core.model.synthetic import SyntheticWeights
from imp_gemma4.config import FULL, SLIDING, load_config
from imp_gemma4.family import Gemma4Family
from imp_gemma4.presets import GEMMA_4_26B_A4B
from tests.gemma4_factory import TEXT, write_checkpoint

FAMILY = Gemma4Family()


def _checkpoint(text: dict, *, wrapper: bool = True, **top) -> Checkpoint:
    config = ({"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4",
               "text_config": {"model_type": "gemma4_text", **text}, **top} if wrapper
              else {"architectures": ["Gemma4ForCausalLM"], "model_type": "gemma4_text", **text, **top})
    return Checkpoint(path=Path("/ck"), format="safetensors", config=config, tensors={}, reader=None)


def _hf_text_config(data: dict):
    import transformers as tf

    keys = set(tf.Gemma4TextConfig.__dataclass_fields__) | {"global_head_dim", "num_global_key_value_heads"}
    return tf.Gemma4TextConfig(**{k: v for k, v in data.items() if k in keys})


def test_real_shape_per_layer_view_matches_transformers():
    cfg = FAMILY.config_from_dict(GEMMA_4_26B_A4B)
    hf = _hf_text_config(GEMMA_4_26B_A4B)
    assert [layer.layer_type for layer in cfg.layers] == hf.layer_types
    for layer in cfg.layers:
        view = hf.per_layer_config[layer.index]
        assert (layer.head_dim, layer.num_kv_heads) == (view.head_dim, view.num_key_value_heads), layer.index
    full = [layer.index for layer in cfg.layers if layer.layer_type == FULL]
    assert full == [5, 11, 17, 23, 29]
    assert {(layer.head_dim, layer.num_kv_heads, layer.k_eq_v, layer.sliding_window)
            for layer in cfg.layers if layer.layer_type == FULL} == {(512, 2, True, None)}
    assert {(layer.head_dim, layer.num_kv_heads, layer.k_eq_v, layer.sliding_window)
            for layer in cfg.layers if layer.layer_type == SLIDING} == {(256, 8, False, 1024)}


def test_rope_tables_match_transformers_and_rotate_the_documented_dims():
    from transformers.models.gemma4.modeling_gemma4 import Gemma4TextRotaryEmbedding

    cfg = FAMILY.config_from_dict(GEMMA_4_26B_A4B)
    hf = Gemma4TextRotaryEmbedding(_hf_text_config(GEMMA_4_26B_A4B))
    for layer_type, d in ((SLIDING, 256), (FULL, 512)):
        ours = cfg.rope[layer_type].inv_freq(d)
        assert torch.equal(ours, getattr(hf, f"{layer_type}_inv_freq")), layer_type
    inv = cfg.rope[FULL].inv_freq(512)
    emb = torch.cat([inv, inv]) * 7.0  # angles at position 7
    rotating = torch.nonzero(emb.cos() != 1).flatten().tolist()
    assert rotating == [*range(0, 64), *range(256, 320)]
    assert torch.equal(inv[:64], 1.0 / 1e6 ** (torch.arange(0, 128, 2).float() / 512))  # denominator 512


def test_both_spellings_of_the_per_layer_facts_parse_alike(tmp_path):
    path = write_checkpoint(tmp_path / "ck", "gemma4", seed=0)
    saved = json.loads((path / "config.json").read_text())["text_config"]
    assert "per_layer_config" in saved and "global_head_dim" not in saved  # transformers 5.24's spelling
    from_saved = FAMILY.parse_config(open_checkpoint(path))
    published = FAMILY.config_from_dict({**TEXT, "architecture": "Gemma4ForConditionalGeneration"})
    assert from_saved.layers == published.layers
    assert [(layer.head_dim, layer.num_kv_heads) for layer in published.layers] == \
        [(16, 2), (16, 2), (32, 1), (16, 2), (16, 2), (32, 1)]


def test_k_eq_v_off_keeps_the_global_kv_heads_as_transformers_does():
    data = {**TEXT, "attention_k_eq_v": False}
    cfg = FAMILY.config_from_dict(data)
    hf = _hf_text_config(data)
    assert [(layer.head_dim, layer.num_kv_heads, layer.k_eq_v) for layer in cfg.layers] == \
        [(hf.per_layer_config[i].head_dim, hf.per_layer_config[i].num_key_value_heads, False) for i in range(6)]


def test_tying_follows_the_top_level_flag():
    assert load_config(_checkpoint(TEXT)).tie_word_embeddings
    assert not load_config(_checkpoint(TEXT, tie_word_embeddings=False)).tie_word_embeddings
    assert not load_config(_checkpoint({**TEXT, "tie_word_embeddings": False}, wrapper=False)).tie_word_embeddings


@pytest.mark.parametrize("change, words", [
    ({"hidden_size_per_layer_input": 256}, "hidden_size_per_layer_input is 256: per-layer embeddings"),
    ({"hidden_size_per_layer_input": None}, "per-layer embeddings"),
    ({"num_kv_shared_layers": 2}, "num_kv_shared_layers is 2"),
    ({"use_bidirectional_attention": "all"}, "use_bidirectional_attention is 'all'"),
    ({"attention_bias": True}, "attention_bias is true"),
    ({"rope_parameters": {SLIDING: {"rope_type": "yarn", "rope_theta": 1e4}, FULL: {"rope_theta": 1e6}}},
     "rope_parameters.sliding_attention.rope_type is 'yarn'"),
    ({"rope_parameters": {SLIDING: {"rope_theta": 1e4}}}, "rope_parameters has no entry for layer type(s) "
                                                          "['full_attention']"),
    ({"layer_types": [SLIDING] * 5 + ["chunked_attention"]}, "layer_types contains ['chunked_attention']"),
    ({"per_layer_config": {"2": {"head_dim": 32, "intermediate_size": 8}}}, "per_layer_config.2 overrides "
                                                                            "['intermediate_size']"),
    ({"num_key_value_heads": 3}, "not a multiple of its 3 kv heads"),
    ({"num_experts": None}, "enable_moe_block needs"),
    ({"hidden_size": None}, "hidden_size"),
])
def test_unsupported_or_bad_configs_are_refused_in_one_line(change, words):
    text = {k: v for k, v in {**TEXT, **change}.items() if v is not None}
    if change.get("hidden_size_per_layer_input", 0) is None:
        text.pop("hidden_size_per_layer_input", None)  # absent: transformers' default 256 applies
    with pytest.raises(CheckpointError) as err:
        load_config(_checkpoint(text))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("/ck/config.json (text_config): ") and words in msg, msg


def test_layer_count_mismatch_and_forced_last_full_layer():
    cfg = FAMILY.config_from_dict({**TEXT, "layer_types": [SLIDING] * 6})
    assert cfg.layers[-1].layer_type == FULL  # transformers forces the last layer to full attention
    with pytest.raises(ImpError, match="layer_types"):
        FAMILY.config_from_dict({**TEXT, "layer_types": [SLIDING, FULL]})


def test_synthetic_spec_names_and_shapes_are_the_published_ones(tmp_path):
    path = write_checkpoint(tmp_path / "ck", "gemma4", seed=0)
    ck = open_checkpoint(path)
    stored = {normalize_name(n): tuple(t.shape) for n, t in ck.tensors.items() if normalize_name(n)}
    spec = FAMILY.synthetic_spec(FAMILY.parse_config(ck))
    assert {n: tuple(s) for n, (s, _) in spec.items()} == stored


def test_real_shape_spec_size_and_cache_bytes():
    cfg = FAMILY.config_from_dict(GEMMA_4_26B_A4B)
    spec = FAMILY.synthetic_spec(cfg)
    params = sum(torch.Size(shape).numel() for shape, _ in spec.values())
    assert 25.0e9 < params < 25.5e9  # 25.23 B for the text decoder (counted at the real shape)
    assert "model.layers.5.self_attn.v_proj.weight" not in spec
    assert spec["model.layers.5.self_attn.q_proj.weight"][0] == (8192, 2816)
    assert spec["model.layers.0.experts.gate_up_proj"][0] == (128, 1408, 2816)
    # 5 global layers x (K+V) x 2 kv heads x 512 x 2 bytes; 25 rings of 1024 x (K+V) x 8 x 256 x 2 bytes
    assert FAMILY.cache_bytes_per_token(cfg, torch.bfloat16) == 5 * 2 * 2 * 512 * 2 == 20480
    assert FAMILY.sliding_cache_bytes(cfg, torch.bfloat16) == 25 * 1024 * 2 * 8 * 256 * 2
    assert FAMILY.cache_bytes(cfg, torch.bfloat16, 4096) == 20480 * 4096 + 25 * 1024 * 2 * 8 * 256 * 2
    rows = dict(FAMILY.describe(cfg))
    assert rows["kv cache (bf16)"].startswith("20.0 KiB/token in 5 global layers + 200.0 MiB fixed in 25")
    info = FAMILY.model_info(cfg, None)
    assert info.is_moe and (info.num_experts, info.experts_per_token) == (128, 8)
    assert [layer.head_dim for layer in info.attention_layers][:6] == [256] * 5 + [512]


def test_embedding_scale_is_rounded_to_the_activation_dtype():
    cfg = FAMILY.config_from_dict({**TEXT, "hidden_size": 2816, "num_hidden_layers": 1,
                                   "layer_types": [FULL], "intermediate_size": 8, "moe_intermediate_size": 8})
    weights = SyntheticWeights(FAMILY.synthetic_spec(cfg), device="cpu", dtype=torch.bfloat16, progress=False)
    model = FAMILY.build(cfg, weights)
    ids = torch.tensor([[5, 9, 300]])
    h = model.embed(ids)
    assert torch.equal(h, model.embed.weight[ids] * 53.0)  # bf16(sqrt(2816)) = 53.0, not 53.066
    assert not torch.equal(h, (model.embed.weight[ids].float() * 2816 ** 0.5).to(torch.bfloat16))
