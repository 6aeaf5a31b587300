"""Mistral on the reference path against transformers 5.24 on the same tiny random weights.

Tolerance: fp32 logits must agree to 1e-4 absolute (measured max |diff| is printed with -s);
the decode steps are compared against transformers' own cached decode, step by step.
"""

from __future__ import annotations

import pytest
import torch

from imp_core.run.generator import Generator
from imp_core.plugin.manager import load_plugins
from imp_core.run.session import load_session
from imp_core.run.sampling import Sampler, SamplingParams
from imp_core.settings.resolve import load_settings
from tests.mistral_factory import load_hf, write_checkpoint

TOL = 1e-4
DECODE_STEPS = 32


@pytest.fixture(scope="module", params=["mistral3", "mistral"])
def ckpt(request, tmp_path_factory):
    layout = request.param
    path = write_checkpoint(tmp_path_factory.mktemp(layout), layout, seed=7)
    return layout, path


def _session(path, **flags):
    resolved = load_settings(cli_flags={"runtime.device": "cpu", "runtime.dtype": "float32", **flags},
                             env={}, user_config=path / "no-user-config.toml")
    return load_session(path, resolved, load_plugins(env={}), progress=False)


def test_logits_match_transformers_prefill_and_decode(ckpt):
    layout, path = ckpt
    hf = load_hf(path, layout)
    session = _session(path)
    model = session.model
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 512, (1, 40), generator=g)

    with torch.no_grad():
        ref = hf(input_ids=ids, use_cache=True)
    gen = Generator(model, context=256)
    ours = model.forward(ids, torch.arange(ids.shape[1]), gen.cache)
    prefill_diff = (ours - ref.logits).abs().max().item()
    assert prefill_diff < TOL, prefill_diff

    past = ref.past_key_values
    token = ref.logits[:, -1].argmax(-1, keepdim=True)
    decode_diff = 0.0
    for step in range(DECODE_STEPS):
        pos = ids.shape[1] + step
        with torch.no_grad():
            ref = hf(input_ids=token, past_key_values=past, use_cache=True)
        past = ref.past_key_values
        ours = model.forward(token, torch.tensor([pos]), gen.cache)
        decode_diff = max(decode_diff, (ours - ref.logits).abs().max().item())
        token = ref.logits[:, -1].argmax(-1, keepdim=True)
    assert decode_diff < TOL, decode_diff
    print(f"\n{layout}: max |logit diff| prefill {prefill_diff:.2e}, decode {decode_diff:.2e}")


def test_greedy_generation_matches_transformers_generate(ckpt):
    layout, path = ckpt
    hf = load_hf(path, layout)
    session = _session(path)
    prompt = session.tokenizer.encode_chat([{"role": "user", "content": "Tell me about the sea."}])
    ids = torch.tensor([prompt])
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24,
                          do_sample=False, eos_token_id=None, pad_token_id=0)
    ref_tokens = ref[0, ids.shape[1]:].tolist()
    gen = Generator(session.model, context=256)
    sampler = Sampler(SamplingParams(temperature=0.0), vocab_size=512, device=torch.device("cpu"))
    ours, stats = gen.generate(prompt, sampler, max_tokens=24, eos_ids=())
    assert ours == ref_tokens
    assert stats.generated_tokens == 24


def test_bf16_run_stays_close_to_fp32(ckpt):
    _, path = ckpt
    s32 = _session(path)
    s16 = _session(path, **{"runtime.dtype": "bfloat16"})
    ids = torch.randint(3, 512, (1, 16), generator=torch.Generator().manual_seed(5))
    a = s32.model.forward(ids, torch.arange(16), s32.model.new_cache(1, 64))
    b = s16.model.forward(ids, torch.arange(16), s16.model.new_cache(1, 64))
    rel = ((a - b).norm() / a.norm()).item()
    assert rel < 3e-2, rel
