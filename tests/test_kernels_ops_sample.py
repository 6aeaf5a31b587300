"""Sampling kernel (imp_kernels.sample) under the CUDA simulator: the same tokens as
imp_core.run.sampling.Sampler for the same seed and logits, step after step. The kernel takes
the engine's SamplingParams duck-typed (or its own SampleSettings)."""

from kernels_sim import sim_skip  # noqa: I001  (must precede imp_kernels)

import pytest
import torch

import imp_core.run.sampling as engine_sampling
from imp_core.run.sampling import Sampler, SamplingParams, seed_row_keys, uniform_noise
from imp_kernels import rng
from imp_kernels.errors import KernelError
from imp_kernels.sample import SampleSettings, sample, sample_plan, sample_ref, supported

pytestmark = sim_skip


@pytest.mark.parametrize("params,vocab,batch,dtype,steps", [
    (SamplingParams(temperature=0.0, seed=1), 9000, 2, torch.float32, 1),               # greedy, partial block
    (SamplingParams(seed=2), 4500, 1, torch.float32, 2),                                 # defaults: k40 p.95 min-p.05
    (SamplingParams(temperature=1.3, top_k=7, top_p=1.0, min_p=0.0, seed=3), 5000, 2, torch.bfloat16, 1),
    (SamplingParams(temperature=0.7, top_k=0, top_p=1.0, min_p=0.0, seed=4), 6000, 1, torch.float32, 2),
    (SamplingParams(temperature=2.0, top_k=64, top_p=0.5, min_p=0.0, seed=5), 4100, 1, torch.float32, 1),
])
def test_sample_matches_sampler(params, vocab, batch, dtype, steps):
    g = torch.Generator().manual_seed(params.seed)
    sampler = Sampler(params, vocab, "cpu", batch=batch)
    plan = sample_plan(params, vocab, batch, "cpu")
    row_keys = seed_row_keys(params.seed, batch)
    step = torch.zeros((), dtype=torch.int64)
    step_ref = torch.zeros((), dtype=torch.int64)
    for _ in range(steps):
        logits = (torch.randn(batch, vocab + 5, generator=g) * 3).to(dtype)  # padded columns ignored
        logits[:, vocab:] = 1e4
        tok = torch.full((batch,), -1, dtype=torch.int64)
        sample(logits, row_keys, step, tok, plan=plan)
        want = sampler.sample(logits)
        assert torch.equal(tok, want)
        tok_ref = torch.full((batch,), -1, dtype=torch.int64)
        sample_ref(logits, row_keys, step_ref, tok_ref, plan=plan)
        assert torch.equal(tok_ref, want)
    assert int(step) == steps == int(sampler.step)


def test_engine_and_kernel_share_the_rng():
    assert engine_sampling.uniform_noise is rng.uniform_noise
    assert engine_sampling.seed_row_keys is rng.seed_row_keys


def test_sample_settings_from_engine_params():
    p = SamplingParams(temperature=0.6, top_k=20, top_p=0.9, min_p=0.1, repeat_penalty=1.1, repeat_last_n=32, seed=3)
    s = SampleSettings.of(p)
    assert s == SampleSettings(0.6, 20, 0.9, 0.1, 1.1, 32) and s.penalised and not s.greedy
    assert SampleSettings.of(s) is s
    # a plan from SampleSettings gives the tokens of a plan from SamplingParams
    p = SamplingParams(temperature=0.9, top_k=12, top_p=0.8, min_p=0.02, seed=6)
    logits = torch.randn(2, 5000, generator=torch.Generator().manual_seed(6)) * 3
    toks = []
    for params in (p, SampleSettings.of(p)):
        tok = torch.empty(2, dtype=torch.int64)
        sample(logits, seed_row_keys(6, 2), torch.zeros((), dtype=torch.int64), tok,
               plan=sample_plan(params, 5000, 2, "cpu"))
        toks.append(tok)
    assert torch.equal(toks[0], toks[1])
    assert torch.equal(toks[0], Sampler(p, 5000, "cpu", batch=2).sample(logits))


def test_sample_ties_go_to_lower_ids():
    params = SamplingParams(temperature=1.0, top_k=5, top_p=1.0, min_p=0.0, seed=9)
    plan = sample_plan(params, 4500, 1, "cpu")
    row_keys = seed_row_keys(9, 1)
    logits = torch.zeros(1, 4500)
    logits[0, 4400:] = 1.0  # 100 tokens tied at the top, across two blocks
    tok = torch.empty(1, dtype=torch.int64)
    sample(logits, row_keys, torch.zeros((), dtype=torch.int64), tok, plan=plan)
    ids = torch.arange(4400, 4405)[None]
    u = uniform_noise(row_keys, torch.zeros((), dtype=torch.int64), ids)
    assert int(tok) == int(ids[0, (-torch.log(-torch.log(u))).argmax()])


def test_sample_unsupported_settings():
    assert supported(SamplingParams(repeat_penalty=1.1), 1000) is not None
    assert supported(SamplingParams(top_k=0, top_p=0.9), 1000) is not None
    assert supported(SamplingParams(top_k=65), 262144) is not None
    assert supported(SamplingParams(top_k=64), 262144) is None
    with pytest.raises(KernelError):
        sample_plan(SamplingParams(top_k=0, min_p=0.1), 1000, 1, "cpu")


@pytest.mark.parametrize("top_p,min_p", [(0.6, 0.0), (1.0, 0.5)])
def test_sample_filters_decide_the_candidates(top_p, min_p):
    """Three live tokens with probabilities ~.51/.31/.19: both filters keep exactly the first two;
    independent rows must reproduce Sampler's draws, which include both."""
    params = SamplingParams(temperature=1.0, top_k=3, top_p=top_p, min_p=min_p, seed=11)
    batch, vocab = 4, 300
    logits = torch.full((batch, vocab), -10.0)
    logits[:, 10], logits[:, 299], logits[:, 30] = 2.0, 1.5, 1.0
    sampler = Sampler(params, vocab, "cpu", batch=batch)
    want = sampler.sample(logits)
    assert set(want.tolist()) == {10, 299}  # the draw exercises both survivors (fixed seed)
    tok = torch.empty(batch, dtype=torch.int64)
    sample(logits, seed_row_keys(11, batch), torch.zeros((), dtype=torch.int64), tok,
           plan=sample_plan(params, vocab, batch, "cpu"))
    assert torch.equal(tok, want)
