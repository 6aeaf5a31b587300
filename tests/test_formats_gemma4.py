"""Quantized Gemma-4 checkpoints: every producer's format against transformers on the dequantised weights,
detection, packed experts, router.per_expert_scale however it is stored, and the gemma4 GGUF (config,
rope_freqs check, gemma4 tokenizer, tied head, imp info).

Fixtures: tests/format_factory_moe.py (real producers on a tiny random Gemma-4 at hidden 256).
Tolerance: 2e-4 absolute on softcapped fp32 logits of magnitude ~30 (7e-6 relative) over a 24-token
prefill and 16 cached decode steps; measured 3e-5 .. 5e-5, which is what imp vs transformers gives on
the unquantized fp32 weights of this model too (4.1e-5: the wide final norm puts pre-softcap logits in
the hundreds). The quantisation error against the BF16 original is printed with -s and only asserted
loosely (format_check_moe bands; docs/formats.md, "Expected quantization error").
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from imp_core.checkpoint.open import open_checkpoint
from imp_core.errors import CheckpointError
from imp_core.quant import QTensor
from imp_core.quant.detect.dispatch import detect_quant
from tests.format_check_moe import check_parity, info_section, prompt_and_steps, session
from tests.format_factory_moe import FORMATS, cached_fixture

FAMILY = "gemma4"
TOL = 2e-4
EXPECTED = {  # format -> (producer, {format: count}); 6 layers: 2 global (no v_proj) + 4 sliding
    "ct-nvfp4": ("compressed-tensors", {"nvfp4": 148}),  # 22 attention + 18 MLP + 6 x 6 x 3 experts
    "ct-nvfp4-3d": ("compressed-tensors", {"nvfp4": 52}),  # experts as 2 stacks per layer
    "ct-fp8": ("compressed-tensors", {"fp8": 148}),
    "modelopt-nvfp4": ("modelopt", {"nvfp4": 126}),  # MLP + experts only
    "gguf-q8_0": ("gguf", {"gguf:Q8_0": 53}),
    "gguf-q4_k_m": ("gguf", {"gguf:Q4_K": 32, "gguf:Q5_0": 14, "gguf:Q6_K": 3, "gguf:Q8_0": 4}),
    "gguf-nvfp4": ("gguf", {"gguf:NVFP4": 12}),  # the other weights BF16 (dense)
}


@pytest.mark.parametrize("fmt", FORMATS[FAMILY])
def test_logits_match_transformers_on_the_dequantised_weights(fmt):
    check_parity(FAMILY, fmt, TOL)


@pytest.mark.parametrize("fmt", FORMATS[FAMILY])
def test_detects_producer_and_formats(fmt):
    plan = detect_quant(open_checkpoint(cached_fixture(FAMILY, fmt).path))
    found: dict[str, int] = {}
    for t in plan.tensors.values():
        found[t.format] = found.get(t.format, 0) + 1
    assert (plan.producer, found) == EXPECTED[fmt]


def test_routers_and_embeddings_stay_dense():
    root = "model.language_model.layers.0."
    for fmt in ("ct-nvfp4", "modelopt-nvfp4"):
        plan = detect_quant(open_checkpoint(cached_fixture(FAMILY, fmt).path))
        for name in ("router.proj.weight", "router.scale", "router.per_expert_scale", "layer_scalar"):
            assert plan.format_of(root + name) == "dense", (fmt, name)
        assert plan.format_of("model.language_model.embed_tokens.weight") == "dense"
    plan = detect_quant(open_checkpoint(cached_fixture(FAMILY, "modelopt-nvfp4").path))
    assert plan.format_of(root + "self_attn.q_proj.weight") == "dense"
    assert plan.tensors[root + "experts.3.down_proj.weight"].scale_tensors["input"].endswith("input_scale")


@pytest.mark.parametrize("fmt,qtype", [("ct-nvfp4", "nvfp4"), ("ct-nvfp4-3d", "nvfp4"), ("modelopt-nvfp4", "nvfp4"),
                                       ("ct-fp8", "fp8"), ("gguf-q8_0", "gguf:Q8_0"), ("gguf-nvfp4", "gguf:NVFP4")])
def test_on_the_fly_keeps_the_experts_packed_and_gives_the_same_logits(fmt, qtype):
    fx = cached_fixture(FAMILY, fmt)
    ids, _ = prompt_and_steps()
    lazy = session(fx.path, **{"quant.dequant": "on_the_fly"})
    experts = lazy.model.layers[2].experts
    assert isinstance(experts.gate_up, QTensor) and experts.gate_up.qtype == qtype
    assert experts.gate_up.shape == (6, 128, 256) and experts.down.shape == (6, 256, 64)
    load = session(fx.path, **{"quant.dequant": "load"})
    a = load.model.forward(ids, torch.arange(ids.shape[1]), load.model.new_cache(1, 32))
    b = lazy.model.forward(ids, torch.arange(ids.shape[1]), lazy.model.new_cache(1, 32))
    assert torch.equal(a, b)


def test_per_expert_scale_folded_into_gguf_nvfp4_experts():
    """llama.cpp folds router.per_expert_scale into ffn_down_exps.scale; imp then routes with ones, and
    the parity test above shows the folded file computes what transformers does with the plain scale."""
    fx = cached_fixture(FAMILY, "gguf-nvfp4")
    ck = open_checkpoint(fx.path)
    assert "blk.0.ffn_down_exps.scale" in ck.tensors
    assert "blk.0.ffn_down_exps.scale" in detect_quant(ck).sidecars
    s = session(fx.path)
    assert torch.equal(s.model.layers[0].router.per_expert_scale, torch.ones(6))
    plain = session(cached_fixture(FAMILY, "gguf-q8_0").path)  # ffn_down_exps.scale = per_expert_scale
    from safetensors.torch import load_file

    orig = load_file(str(fx.original / "model.safetensors"))["model.language_model.layers.0.router.per_expert_scale"]
    assert torch.equal(plain.model.layers[0].router.per_expert_scale, orig.float())


# -- GGUF ---------------------------------------------------------------------------------------
def test_gguf_config_from_metadata_matches_config_json():
    from imp_gemma4.family import Gemma4Family

    fx = cached_fixture(FAMILY, "gguf-q4_k_m")
    s = session(fx.path)
    cfg = s.inspection.config
    hf = Gemma4Family().config_from_dict(json.loads((fx.original / "config.json").read_text())["text_config"])
    assert cfg.rms_norm_eps == pytest.approx(hf.rms_norm_eps)  # stored as f32 in GGUF
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "sliding_window", "final_logit_softcapping", "attention_k_eq_v", "enable_moe_block",
                "num_experts", "top_k_experts", "moe_intermediate_size", "tie_word_embeddings", "layers", "rope"):
        assert getattr(cfg, key) == getattr(hf, key), key
    assert cfg.architecture == "Gemma4ForCausalLM (GGUF gemma4)" and s.inspection.spec.family == "gemma4"
    assert s.model.lm_head.weight is s.model.embed.weight  # tied: no output.weight in the file


def _patched_rope_freqs(tmp_path, value: float, index: int):
    src = cached_fixture(FAMILY, "gguf-q8_0").path
    tmp_path.mkdir(parents=True, exist_ok=True)
    dst = tmp_path / src.name
    shutil.copy(src, dst)
    info = open_checkpoint(dst).tensors["rope_freqs.weight"]
    raw = bytearray(dst.read_bytes())
    raw[info.offset + 4 * index: info.offset + 4 * index + 4] = torch.tensor([value]).numpy().tobytes()
    dst.write_bytes(bytes(raw))
    return dst


def test_rope_freqs_that_disagree_with_the_config_are_refused(tmp_path):
    # pair 4 marked rotated: a partial_rotary_factor of 0.3125 instead of the config's 0.25
    with pytest.raises(CheckpointError) as info:
        session(_patched_rope_freqs(tmp_path, 1.0, 4))
    msg = str(info.value)
    assert "rope_freqs marks 5 of 16 pairs as rotated" in msg and "rotates the first 4" in msg and "\n" not in msg
    with pytest.raises(CheckpointError, match="rope_freqs marks 3 of 16"):
        session(_patched_rope_freqs(tmp_path / "b", 2.0, 0))


def test_gguf_tokenizer_and_chat_template_match_the_hf_tokenizer():
    from imp_core.text.tokenizer import Tokenizer

    fx = cached_fixture(FAMILY, "gguf-q8_0")
    ours, ref = session(fx.path).tokenizer, Tokenizer.from_dir(fx.original)
    for text in ["The quick brown fox jumps over the lazy dog.", "Café, naïve — 日本語 42 (a+b)*c",
                 "<|turn>user\nHi<turn|> done", "  leading spaces\n\nand\ttabs", "zqxj ✓"]:
        assert ours.encode(text) == ref.encode(text), text
        assert ours.decode(ref.encode(text)) == ref.decode(ref.encode(text))
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about Paris."}]
    assert ours.encode_chat(msgs) == ref.encode_chat(msgs)
    assert ours.bos_token == "<bos>" and 1 in ours.eos_token_ids


def test_gguf_metadata_refusals():
    from imp_gemma4.gguf import config_from_gguf

    ck = open_checkpoint(cached_fixture(FAMILY, "gguf-q8_0").path)
    cases = [("gemma4.attention.sliding_window_pattern", [True, False], "one bool per layer"),
             ("gemma4.feed_forward_length", [96, 96, 96, 96, 96, 192], "double-wide MLP"),
             ("gemma4.attention.head_count_kv", [2, 1, 1, 2, 2, 1], "differs between sliding_attention layers"),
             ("gemma4.rope.dimension_count_swa", 8, "rope.dimension_count_swa is 8, expected 16")]
    for key, value, fragment in cases:
        with pytest.raises(CheckpointError) as info:
            config_from_gguf({**ck.metadata, key: value}, ck.tensors, where="x.gguf")
        assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)
    no_v = {k: v for k, v in ck.tensors.items()}
    no_v["blk.2.attn_v.weight"] = ck.tensors["blk.0.attn_k.weight"]
    with pytest.raises(CheckpointError, match="some global layers have attn_v"):
        config_from_gguf(ck.metadata, no_v, where="x.gguf")


def test_imp_info_shows_producer_and_moe_roles():
    from tests.cli_util import run_imp

    out = run_imp("info", "--model", str(cached_fixture(FAMILY, "gguf-nvfp4").path))
    assert out.returncode == 0, out.stderr
    rows = info_section(out.stdout, "tensor roles x qtype")
    assert "gguf" in info_section(out.stdout, "quantization")["producer"] and "MOSTLY_NVFP4" in out.stdout
    assert "gguf:NVFP4" in rows["experts"] and "F32" in rows["router"] and "BF16" in rows["attention"]
    assert "embedding" in rows and "mlp" in rows and "lm_head" not in rows  # tied
