"""Mistral's fast decode step under the CUDA simulator vs the reference path (tiny shapes that
meet the kernels' constraints: head_dim 64, bf16)."""

from __future__ import annotations

import torch

from kernels_sim import sim_skip
from tests.fast_sim import REL_TOL, compare_steps, sim_session
from tests.mistral_factory import write_checkpoint

pytestmark = sim_skip

SHAPE = dict(hidden_size=128, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=64, vocab_size=512)


def test_fast_decode_matches_reference(tmp_path):
    path = write_checkpoint(tmp_path / "m", "mistral", seed=7, dtype=torch.bfloat16, **SHAPE)
    session = sim_session(path)
    plan = dict(session.inspection.plan)
    assert plan["decode fast path"] == "on"
    errors = compare_steps(session, list(range(3, 14)), steps=4)
    print("rel errors", errors)
    assert max(errors) < REL_TOL, errors
