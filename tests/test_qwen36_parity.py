"""Qwen3.5/3.6 on the reference path against transformers 5.24 on the same tiny random weights.

Three checkpoints written by transformers (tests/qwen36_factory.py): the published fused-expert
layout, the per-expert layout of quantized exports (with an MTP head to skip), and the dense
qwen3_5 sibling. transformers runs its pure-torch DeltaNet fallbacks (fla / causal_conv1d are
not installed), eager attention and eager experts, fp32.

Tolerance: fp32 logits (of magnitude ~4) agree to 1e-4 absolute; measured max |diff| is printed
with -s. The prefill is longer than one DeltaNet chunk (64); the 32 decode steps are compared
against transformers' own cached decode, step by step.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from imp_core.run.generator import Generator
from imp_core.plugin.manager import load_plugins
from imp_core.run.session import load_session
from imp_core.run.sampling import Sampler, SamplingParams
from imp_core.settings.resolve import load_settings
from tests.qwen36_factory import CHUNK, LAYOUTS, VOCAB, load_hf, write_checkpoint

TOL = 1e-4
PREFILL = CHUNK + 16
DECODE_STEPS = 32


@pytest.fixture(scope="module", params=LAYOUTS)
def ckpt(request, tmp_path_factory):
    layout = request.param
    path = write_checkpoint(tmp_path_factory.mktemp(layout), layout, seed=7)
    return layout, path, load_hf(path, layout)


def session(path: Path, **flags):
    resolved = load_settings(cli_flags={"runtime.device": "cpu", "runtime.dtype": "float32", **flags},
                             env={}, user_config=path / "no-user-config.toml")
    return load_session(path, resolved, load_plugins(env={}), progress=False)


def test_logits_match_transformers_prefill_and_decode(ckpt):
    layout, path, hf = ckpt
    model = session(path).model
    ids = torch.randint(3, VOCAB, (1, PREFILL), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf(input_ids=ids, use_cache=True)
    gen = Generator(model, context=256)
    ours = model.forward(ids, torch.arange(PREFILL), gen.cache)
    prefill_diff = (ours - ref.logits).abs().max().item()
    assert prefill_diff < TOL, prefill_diff

    past = ref.cache
    token = ref.logits[:, -1].argmax(-1, keepdim=True)
    decode_diff = 0.0
    for step in range(DECODE_STEPS):
        with torch.no_grad():
            ref = hf(input_ids=token, cache=past, use_cache=True)
        past = ref.cache
        ours = model.forward(token, torch.tensor([PREFILL + step]), gen.cache)
        decode_diff = max(decode_diff, (ours - ref.logits).abs().max().item())
        token = ref.logits[:, -1].argmax(-1, keepdim=True)
    assert decode_diff < TOL, decode_diff
    print(f"\nqwen36 {layout}: max |logit diff| prefill {prefill_diff:.2e}, decode {decode_diff:.2e} "
          f"(logits up to {ref.logits.abs().max().item():.1f})")


def test_greedy_generation_matches_transformers_generate(ckpt):
    layout, path, hf = ckpt
    s = session(path)
    text = "Tell me about the sea, the rivers and the mountains, and then write a short poem. " * 2
    prompt = s.tokenizer.encode_chat([{"role": "user", "content": text}])
    assert len(prompt) > CHUNK
    ids = torch.tensor([prompt])
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24,
                          do_sample=False, eos_token_id=None, pad_token_id=0)
    ref_tokens = ref[0, ids.shape[1]:].tolist()
    gen = Generator(s.model, context=256)
    sampler = Sampler(SamplingParams(temperature=0.0), vocab_size=VOCAB, device=torch.device("cpu"))
    ours, stats = gen.generate(prompt, sampler, max_tokens=24, eos_ids=())
    assert ours == ref_tokens
    assert stats.generated_tokens == 24


def test_skipped_tensors_and_layout_are_as_published(ckpt):
    layout, path, _ = ckpt
    s = session(path)
    names = s.inspection.checkpoint.tensors
    if layout == "fused":
        assert "model.language_model.layers.0.mlp.experts.gate_up_proj" in names
        assert any(n.startswith("model.visual.") for n in names)
    elif layout == "per_expert":
        assert "model.language_model.layers.0.mlp.experts.0.gate_proj.weight" in names
        assert any(n.startswith("mtp.") for n in names)
    assert s.inspection.info.is_moe == (layout != "dense")
    assert s.inspection.spec.family == "qwen36"
