"""Gemma-4's fast decode step under the CUDA simulator vs the reference path: sliding (ring) and
global (K=V, proportional RoPE) layers, the dense MLP beside the MoE, the soft-capped tied head.
Tiny shapes that meet the kernels' constraints (head dims 64 and 128), bf16; the prompt is longer
than the window so the rings wrap."""

from __future__ import annotations

import torch

from kernels_sim import sim_skip
from tests.fast_sim import REL_TOL, compare_steps, sim_session
from tests.gemma4_factory import write_checkpoint

pytestmark = sim_skip

SHAPE = dict(hidden_size=128, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
             global_head_dim=128, num_global_key_value_heads=1, num_experts=4, moe_intermediate_size=32,
             sliding_window=8, num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"])


def test_fast_decode_matches_reference(tmp_path):
    path = write_checkpoint(tmp_path / "g", "gemma4_text", seed=9, dtype=torch.bfloat16, **SHAPE)
    session = sim_session(path)
    assert dict(session.inspection.plan)["decode fast path"] == "on"
    # one step (the simulator is slow): the 12-token prompt has already wrapped the 8-slot ring
    errors = compare_steps(session, list(range(3, 15)), steps=1)
    print("rel errors", errors)
    assert max(errors) < REL_TOL, errors
