"""Generator bookkeeping that the parity tests do not cover."""

from __future__ import annotations

import pytest
import torch

from imp_core.run.generator import GenerationStats, Generator
from imp_core.errors import PromptTooLongError
from imp_core.run.sampling import Sampler, SamplingParams
from tests.test_mistral_parity import _session
from tests.mistral_factory import write_checkpoint


def test_stats_line_excludes_prefill_token_and_capture_step():
    s = GenerationStats(prompt_tokens=10, generated_tokens=12, prefill_seconds=0.5, decode_seconds=1.0,
                        capture_seconds=0.25, finish_reason="max tokens")
    line = s.line()
    assert "prefill 20.0 tok/s" in line and "decode 10.0 tok/s" in line and "graph capture 250 ms" in line
    assert "graph capture" not in GenerationStats(1, 2, 1.0, 1.0).line()


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return _session(write_checkpoint(tmp_path_factory.mktemp("m"), "mistral", seed=3))


def test_graphs_are_off_on_cpu_and_context_is_enforced(session):
    gen = Generator(session.model, context=16, cuda_graphs=True)
    assert gen.cuda_graphs is False
    sampler = Sampler(SamplingParams(temperature=0.0), 512, torch.device("cpu"))
    with pytest.raises(PromptTooLongError):
        gen.generate(list(range(3, 20)), sampler, max_tokens=4, eos_ids=())
    out, stats = gen.generate(list(range(3, 13)), sampler, max_tokens=100, eos_ids=())
    assert len(out) == 16 - 10 + 1 and stats.finish_reason == "context full"


def test_two_turns_reuse_the_cache(session):
    model = session.model
    ids = torch.randint(3, 512, (1, 24), generator=torch.Generator().manual_seed(1))
    whole = model.forward(ids, torch.arange(24), model.new_cache(1, 64), last_only=True)
    gen = Generator(model, context=64)
    gen.prefill(ids[0, :10].tolist())
    second = gen.prefill(ids[0, 10:].tolist())
    assert torch.allclose(second, whole[:, -1], atol=1e-5)
    assert gen.length == 24
