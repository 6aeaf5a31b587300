"""Qwen3.5/3.6 config parsing (the real config.json layouts), `imp info`, bad input, synthetic spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from imp_core.checkpoint.base import Checkpoint
from imp_core.checkpoint.names import normalize_name
from imp_core.errors import CheckpointError
from imp_core.model.synthetic import SyntheticWeights
from imp_qwen36.config import FULL, LINEAR, load_config
from imp_qwen36.family import Qwen36Family, layer_pattern
from imp_qwen36.presets import QWEN3_6_35B_A3B, QWEN3_6_MINI
from tests.cli_util import assert_one_line_error, run_imp
from tests.qwen36_factory import stored_names, write_checkpoint

FAMILY = Qwen36Family()


def _wrapper(text: dict, arch: str = "Qwen3_5MoeForConditionalGeneration") -> dict:
    """config.json as published: text_config inside the multimodal wrapper."""
    text = {k: v for k, v in text.items() if k != "architecture"}
    return {"architectures": [arch], "model_type": "qwen3_5_moe", "text_config": text,
            "vision_config": {"model_type": "qwen3_5_moe_vision", "depth": 27}, "image_token_id": 248056,
            "tie_word_embeddings": False}


def _checkpoint(config: dict, path: str = "/ckpt") -> Checkpoint:
    return Checkpoint(path=Path(path), format="safetensors", config=config, tensors={}, reader=None)


def test_real_config_layout_parses_with_the_published_values():
    text = {**QWEN3_6_35B_A3B, "mtp_num_hidden_layers": 1, "attn_output_gate": True,
            "mamba_ssm_dtype": "float32", "mtp_use_dedicated_embeddings": False}
    cfg = load_config(_checkpoint(_wrapper(text)))
    assert cfg.moe and cfg.architecture == "Qwen3_5MoeForConditionalGeneration"
    assert cfg.layer_types == (LINEAR, LINEAR, LINEAR, FULL) * 10
    assert cfg.full_layers == [3, 7, 11, 15, 19, 23, 27, 31, 35, 39]
    assert cfg.rotary_dim == 64 and cfg.rope_theta == 1e7
    assert cfg.mrope_section == (11, 11, 10) and cfg.mrope_interleaved
    assert cfg.conv_dim == 8192 and cfg.linear_value_dim == 4096
    assert (cfg.num_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size) == (256, 8, 512)


def test_explicit_layer_types_and_legacy_rope_keys():
    text = {k: v for k, v in QWEN3_6_35B_A3B.items() if k not in ("rope_parameters", "full_attention_interval")}
    text.update(num_hidden_layers=6, layer_types=[LINEAR, FULL, LINEAR, LINEAR, FULL, FULL],
                rope_theta=5e6, partial_rotary_factor=0.5,
                rope_scaling={"type": "mrope", "mrope_section": [22, 21, 21], "mrope_interleaved": False})
    cfg = load_config(_checkpoint(_wrapper(text)))
    assert cfg.full_layers == [1, 4, 5] and cfg.rotary_dim == 128 and cfg.rope_theta == 5e6
    assert layer_pattern(cfg.layer_types) == "L F L L F F"


def test_dense_sibling_and_text_only_layout():
    text = {k: v for k, v in QWEN3_6_35B_A3B.items()
            if k not in ("num_experts", "num_experts_per_tok", "moe_intermediate_size",
                         "shared_expert_intermediate_size", "architecture")}
    text.update(model_type="qwen3_5_text", intermediate_size=17408, architectures=["Qwen3_5ForCausalLM"])
    cfg = load_config(_checkpoint(text))
    assert not cfg.moe and cfg.intermediate_size == 17408
    assert ("mlp", "dense SwiGLU 17408") in FAMILY.describe(cfg)


@pytest.mark.parametrize("change, key", [
    ({"layer_types": [LINEAR, "sliding_attention"] * 20}, "sliding_attention"),
    ({"layer_types": [LINEAR] * 3}, "layer_types"),
    ({"linear_num_value_heads": 24}, "linear_num_value_heads"),
    ({"num_experts_per_tok": 300}, "num_experts"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope_type 'yarn'"),
    ({"hidden_size": "wide"}, "hidden_size"),
])
def test_bad_configs_are_one_line_checkpoint_errors(change, key):
    with pytest.raises(CheckpointError) as err:
        load_config(_checkpoint(_wrapper({**QWEN3_6_35B_A3B, **change})))
    msg = str(err.value)
    assert "\n" not in msg and key in msg and ("/ckpt/config.json" in msg or "config.json" in msg), msg


def test_describe_and_cache_bytes_at_the_real_shape():
    cfg = FAMILY.config_from_dict(QWEN3_6_35B_A3B)
    rows = dict(FAMILY.describe(cfg))
    assert rows["layers"].startswith("40: L L L F x10")
    assert rows["experts"].startswith("256 routed, top-8, + shared")
    # 10 full layers x (K + V) x 2 kv heads x 256 x 2 bytes
    assert FAMILY.cache_bytes_per_token(cfg, torch.bfloat16) == 10 * 2 * 2 * 256 * 2 == 20480
    # 30 DeltaNet layers x (conv 8192 x 3 bf16 + recurrent 32 x 128 x 128 fp32)
    assert FAMILY.state_bytes_per_sequence(cfg, torch.bfloat16) == 30 * (8192 * 3 * 2 + 32 * 128 * 128 * 4)
    assert rows["cache per token"].startswith("20.0 KiB")
    assert rows["cache per sequence"].startswith("61.4 MiB")
    info = FAMILY.model_info(cfg)
    assert [a.index for a in info.attention_layers] == cfg.full_layers
    assert all(a.output_gate and a.head_dim == 256 for a in info.attention_layers)
    assert info.is_moe and info.num_experts == 256 and info.experts_per_token == 8


def test_imp_info_shows_pattern_experts_and_cache(tmp_path):
    path = write_checkpoint(tmp_path / "q", "per_expert", seed=2)
    proc = run_imp("info", "--model", str(path))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for needle in ("family              qwen36", "L L L F", "8 routed, top-2, + shared", "cache per token",
                   "cache per sequence", "skipped"):
        assert needle in out, (needle, out)


def test_wrong_tensor_shape_and_missing_experts_name_the_tensor():
    cfg = FAMILY.config_from_dict(QWEN3_6_MINI)
    spec = FAMILY.synthetic_spec(cfg)
    bad = dict(spec)
    name = "model.layers.0.linear_attn.in_proj_qkv.weight"
    bad[name] = ((17, cfg.hidden_size), "normal")
    with pytest.raises(CheckpointError, match=r"in_proj_qkv.weight' has shape \[17, 256\], expected \[1024, 256\]"):
        FAMILY.build(cfg, SyntheticWeights(bad, device=torch.device("cpu"), dtype=torch.float32, progress=False))
    missing = {k: v for k, v in spec.items() if ".experts." not in k or not k.startswith("model.layers.2.")}
    with pytest.raises(CheckpointError, match="no experts for 'model.layers.2.mlp.'"):
        FAMILY.build(cfg, SyntheticWeights(missing, device=torch.device("cpu"), dtype=torch.float32,
                                           progress=False))


def test_synthetic_spec_names_and_shapes_are_the_published_ones(tmp_path):
    path = write_checkpoint(tmp_path / "q", "fused", seed=3)
    cfg = FAMILY.config_from_dict(json.loads((path / "config.json").read_text())["text_config"])
    from safetensors import safe_open

    published = {}
    with safe_open(path / "model.safetensors", "pt") as fh:
        for n in stored_names(path):
            norm = normalize_name(n, FAMILY.skip_prefixes)
            if norm is not None:
                published[norm] = tuple(fh.get_slice(n).get_shape())
    spec = FAMILY.synthetic_spec(cfg)
    assert {k: tuple(v[0]) for k, v in spec.items()} == published


def test_mini_preset_builds_from_synthetic_weights_and_runs():
    cfg = FAMILY.config_from_dict(QWEN3_6_MINI)
    w = SyntheticWeights(FAMILY.synthetic_spec(cfg), device=torch.device("cpu"), dtype=torch.float32,
                         progress=False)
    model = FAMILY.build(cfg, w)
    w.finish(strict=True)
    cache = model.new_cache(1, 80)
    logits = model.forward(torch.arange(3, 73)[None], torch.arange(70), cache, last_only=True)
    step = model.forward(torch.tensor([[5]]), torch.tensor([70]), cache)
    assert logits.shape == step.shape == (1, 1, cfg.vocab_size)
    assert torch.isfinite(logits).all() and torch.isfinite(step).all()


def test_bad_checkpoint_through_the_cli_is_one_line(tmp_path):
    path = write_checkpoint(tmp_path / "q", "fused", seed=4)
    cfg = json.loads((path / "config.json").read_text())
    cfg["text_config"]["linear_num_key_heads"] = 3
    (path / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(run_imp("info", "--model", str(path)), "config.json", "linear_num_value_heads")
