"""Quantized Qwen3.6 checkpoints: every producer's format against transformers on the dequantised weights,
detection, packed experts, and the qwen35moe GGUF (config, converter transforms, tokenizer, imp info).

Fixtures: tests/format_factory_moe.py (real producers on a tiny random Qwen3.6 at hidden 256).
Tolerance: fp32 logits (up to ~8) agree to 1e-4 absolute over a 24-token prefill and 16 cached decode
steps (measured 8e-6 .. 1e-5, the same as unquantized fp32 parity). The quantisation error against the
BF16 original is printed with -s and only asserted loosely (format_check_moe.WEIGHT_ERROR bands, from
docs/formats.md, "Expected quantization error"); the tiny random model turns 0.5 % weight error into ~15 % logit error (Gaussian noise
of the same relative size does the same), so the logit bound is wide.
"""

from __future__ import annotations

import json

import pytest
import torch

from imp_core.checkpoint.open import open_checkpoint
from imp_core.errors import CheckpointError
from imp_core.quant import QTensor
from imp_core.quant.detect.dispatch import detect_quant
from tests.format_check_moe import check_parity, info_section, prompt_and_steps, session
from tests.format_factory_moe import FORMATS, cached_fixture

FAMILY = "qwen36"
TOL = 1e-4
EXPECTED = {  # format -> (producer, {format: count})
    "ct-nvfp4": ("compressed-tensors", {"nvfp4": 88}),  # 4 attention + 4 layers x (6 x 3 experts + 3 shared)
    "ct-nvfp4-3d": ("compressed-tensors", {"nvfp4": 24}),  # experts as 2 stacks per layer
    "ct-fp8": ("compressed-tensors", {"fp8": 97}),  # + 3 DeltaNet layers x 3 projections
    "modelopt-mixed": ("modelopt", {"nvfp4": 85, "fp8": 13}),  # experts, shared, lm_head | attention, DeltaNet
    "gguf-q8_0": ("gguf", {"gguf:Q8_0": 45}),
    "gguf-q4_k_m": ("gguf", {"gguf:Q4_K": 30, "gguf:Q6_K": 3, "gguf:Q5_0": 8, "gguf:Q8_0": 4}),
}


@pytest.mark.parametrize("fmt", FORMATS[FAMILY])
def test_logits_match_transformers_on_the_dequantised_weights(fmt):
    check_parity(FAMILY, fmt, TOL)


def test_dense_sibling_gguf_qwen35_matches_transformers():
    check_parity("qwen36-dense", "gguf-q4_k_m", TOL)
    s = session(cached_fixture("qwen36-dense", "gguf-q4_k_m").path)
    assert s.inspection.config.architecture == "Qwen3_5ForCausalLM (GGUF qwen35)"
    assert not s.inspection.config.moe and s.inspection.config.intermediate_size == 128


@pytest.mark.parametrize("fmt", FORMATS[FAMILY])
def test_detects_producer_and_formats(fmt):
    plan = detect_quant(open_checkpoint(cached_fixture(FAMILY, fmt).path))
    found: dict[str, int] = {}
    for t in plan.tensors.values():
        found[t.format] = found.get(t.format, 0) + 1
    assert (plan.producer, found) == EXPECTED[fmt]


def test_mixed_precision_checkpoint_keeps_routers_gates_and_small_projections_dense():
    plan = detect_quant(open_checkpoint(cached_fixture(FAMILY, "modelopt-mixed").path))
    root = "model.language_model.layers."
    assert plan.format_of("lm_head.weight") == "nvfp4"
    assert plan.tensors[root + "0.mlp.experts.5.down_proj.weight"].scheme == "ModelOpt W4A16_NVFP4"
    assert plan.tensors[root + "1.mlp.shared_expert.up_proj.weight"].format == "nvfp4"
    for name in ("3.self_attn.k_proj.weight", "0.linear_attn.in_proj_qkv.weight", "2.linear_attn.out_proj.weight"):
        tq = plan.tensors[root + name]
        assert (tq.format, tq.granularity) == ("fp8", "tensor"), name
    for dense in ("0.mlp.gate.weight", "0.mlp.shared_expert_gate.weight", "0.linear_attn.in_proj_a.weight",
                  "0.linear_attn.in_proj_b.weight", "0.linear_attn.conv1d.weight"):
        assert plan.format_of(root + dense) == "dense", dense
    assert any("kv cache FP8" in d for d in plan.details)


@pytest.mark.parametrize("fmt,qtype,glob", [("ct-nvfp4", "nvfp4", (6,)), ("ct-nvfp4-3d", "nvfp4", (6, 2)),
                                            ("modelopt-mixed", "nvfp4", (6,)), ("ct-fp8", "fp8", None),
                                            ("gguf-q4_k_m", "gguf:Q4_K", None)])
def test_on_the_fly_keeps_the_experts_packed_and_gives_the_same_logits(fmt, qtype, glob):
    fx = cached_fixture(FAMILY, fmt)
    ids, _ = prompt_and_steps()
    lazy = session(fx.path, **{"quant.dequant": "on_the_fly"})
    experts = lazy.model.layers[1].mlp.experts
    assert isinstance(experts.gate_up, QTensor) and experts.gate_up.qtype == qtype
    assert experts.gate_up.shape == (6, 64, 256) and experts.down.shape == (6, 256, 32)
    if glob:
        assert tuple(experts.gate_up.scales["global"].shape) == glob
    load = session(fx.path, **{"quant.dequant": "load"})
    assert isinstance(load.model.layers[1].mlp.experts.gate_up, torch.Tensor)
    a = load.model.forward(ids, torch.arange(ids.shape[1]), load.model.new_cache(1, 32))
    b = lazy.model.forward(ids, torch.arange(ids.shape[1]), lazy.model.new_cache(1, 32))
    assert torch.equal(a, b)


# -- GGUF ---------------------------------------------------------------------------------------
def test_gguf_config_from_metadata_matches_config_json():
    from imp_qwen36.family import Qwen36Family

    fx = cached_fixture(FAMILY, "gguf-q8_0")
    s = session(fx.path)
    cfg = s.inspection.config
    hf = Qwen36Family().config_from_dict(json.loads((fx.original / "config.json").read_text())["text_config"])
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "layer_types", "num_attention_heads",
                "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "partial_rotary_factor",
                "linear_conv_kernel_dim", "linear_key_head_dim", "linear_value_head_dim", "linear_num_key_heads",
                "linear_num_value_heads", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
                "shared_expert_intermediate_size", "max_position_embeddings", "moe", "tie_word_embeddings"):
        assert getattr(cfg, key) == pytest.approx(getattr(hf, key)), key
    assert cfg.architecture == "Qwen3_5MoeForCausalLM (GGUF qwen35moe)"
    assert s.inspection.spec.family == "qwen36"


@pytest.mark.parametrize("dropped", ["linear_attn.out_proj.weight", "linear_attn.in_proj_z.weight",
                                     "input_layernorm.weight", "linear_attn.A"])
def test_each_converter_transform_is_needed(monkeypatch, dropped):
    """Without one of the inverse transforms (value-head re-tiling, norm shift) the logits are wrong."""
    import imp_qwen36.gguf as qg

    fx = cached_fixture(FAMILY, "gguf-q8_0")
    ids, _ = prompt_and_steps()
    good = session(fx.path).model
    original = qg.gguf_transforms
    monkeypatch.setattr(qg, "gguf_transforms", lambda cfg: {k: v for k, v in original(cfg).items() if k != dropped})
    bad = session(fx.path).model
    pos = torch.arange(ids.shape[1])
    diff = (good.forward(ids, pos, good.new_cache(1, 32)) - bad.forward(ids, pos, bad.new_cache(1, 32))).abs().max()
    assert diff > 1e-2, (dropped, diff)


def test_gguf_tokenizer_and_chat_template_match_the_hf_tokenizer():
    from imp_core.text.tokenizer import Tokenizer

    fx = cached_fixture(FAMILY, "gguf-q4_k_m")
    ours, ref = session(fx.path).tokenizer, Tokenizer.from_dir(fx.original)
    for text in ["The quick brown fox jumps over the lazy dog.", "Café, naïve — 日本語 42 (a+b)*c",
                 "<|im_start|>user\nHi<|im_end|> <think>x</think>", "  leading spaces\n\nand\ttabs"]:
        assert ours.encode(text) == ref.encode(text), text
        assert ours.decode(ref.encode(text)) == ref.decode(ref.encode(text))
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about Paris."}]
    assert ours.encode_chat(msgs) == ref.encode_chat(msgs)
    assert 2 in ours.eos_token_ids


def test_gguf_generation_with_its_own_tokenizer_matches_transformers():
    from imp_core.run.generator import Generator
    from imp_core.run.sampling import Sampler, SamplingParams
    from tests.format_factory_moe import load_hf

    fx = cached_fixture(FAMILY, "gguf-q8_0")
    s = session(fx.path)
    prompt = s.tokenizer.encode_chat([{"role": "user", "content": "Tell me about the sea."}])
    ids = torch.tensor([prompt])
    with torch.no_grad():
        ref = load_hf(FAMILY, fx.dense).generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                 max_new_tokens=10, do_sample=False, eos_token_id=None,
                                                 pad_token_id=0)
    sampler = Sampler(SamplingParams(temperature=0.0), vocab_size=512, device=torch.device("cpu"))
    ours, _ = Generator(s.model, context=64).generate(prompt, sampler, max_tokens=10, eos_ids=())
    assert ours == ref[0, ids.shape[1]:].tolist()


def test_gguf_metadata_refusals_and_mtp_blocks():
    from imp_qwen36.gguf import config_from_gguf, mtp_rename

    fx = cached_fixture(FAMILY, "gguf-q8_0")
    ck = open_checkpoint(fx.path)
    meta = dict(ck.metadata)
    meta["qwen35moe.block_count"] = 5
    meta["qwen35moe.nextn_predict_layers"] = 1
    assert config_from_gguf(meta, ck.tensors, where="x.gguf")["num_hidden_layers"] == 4
    rename = mtp_rename(4)
    assert rename("blk.4.nextn.eh_proj.weight") is None and rename("model.layers.4.mlp.gate.weight") is None
    assert rename("model.layers.3.mlp.gate.weight") == "model.layers.3.mlp.gate.weight"
    for key, value, fragment in [("qwen35moe.attention.value_length", 64, "value_length 64 differs"),
                                 ("qwen35moe.ssm.inner_size", 130, "not a multiple of ssm.time_step_rank"),
                                 ("qwen35moe.rope.dimension_count", 7, "rope.dimension_count is 7")]:
        with pytest.raises(CheckpointError) as info:
            config_from_gguf({**ck.metadata, key: value}, ck.tensors, where="x.gguf")
        assert fragment in str(info.value) and "\n" not in str(info.value)
    broken = {k: v for k, v in ck.metadata.items() if k != "qwen35moe.ssm.group_count"}
    with pytest.raises(CheckpointError, match="'qwen35moe.ssm.group_count' is missing"):
        config_from_gguf(broken, ck.tensors, where="x.gguf")


@pytest.mark.parametrize("fmt", ["gguf-q4_k_m", "modelopt-mixed"])
def test_imp_info_shows_producer_and_moe_roles(fmt):
    from tests.cli_util import run_imp

    out = run_imp("info", "--model", str(cached_fixture(FAMILY, fmt).path))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    rows = info_section(text, "tensor roles x qtype")
    rows["producer"] = info_section(text, "quantization")["producer"]
    for role in ("experts", "shared_expert", "router", "linear_attention", "attention", "lm_head", "embedding"):
        assert role in rows, (role, text)
    if fmt == "gguf-q4_k_m":
        assert "gguf" in rows["producer"]
        assert "gguf:Q4_K" in rows["experts"] and "F32" in rows["router"] and "gguf:Q6_K" in rows["lm_head"]
    else:
        assert "modelopt" in rows["producer"] and "kv cache FP8" in text
        assert "nvfp4" in rows["experts"] and "fp8" in rows["linear_attention"] and "BF16" in rows["router"]
