"""Qwen3.6's fast decode step under the CUDA simulator vs the reference path: gated attention,
Gated DeltaNet and MoE (with the shared expert) layers, and the dense sibling. Tiny shapes that
meet the kernels' constraints (head_dim 64, DeltaNet key heads of 128), bf16. The MoE case also
checks what the experts read: from the one router launch, ids, bf16-rounded fp32 weights and the
shared-expert gate logit. (Check mode's forced routing on this path is exercised by ``imp check``
on the GPU fixtures, tests/gpu/check_fast.py: a simulator step costs ~45 s of CI.)"""

from __future__ import annotations

import pytest
import torch

from kernels_sim import sim_skip
from tests.fast_sim import REL_TOL, compare_steps, sim_session
from tests.qwen36_factory import write_checkpoint

pytestmark = sim_skip

# two layers: one Gated DeltaNet, one gated attention (the simulator runs every GPU thread in Python)
SHAPE = dict(hidden_size=128, num_hidden_layers=2, full_attention_interval=2, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
             linear_num_key_heads=1, linear_num_value_heads=2, linear_key_head_dim=128, linear_value_head_dim=32,
             rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                              "mrope_section": [4, 2, 2], "mrope_interleaved": True})


@pytest.mark.parametrize("layout", ["fused", "dense"])
def test_fast_decode_matches_reference(tmp_path, layout):
    extra = dict(num_experts=4, moe_intermediate_size=32, shared_expert_intermediate_size=32) \
        if layout == "fused" else dict(intermediate_size=128)
    path = write_checkpoint(tmp_path / layout, layout, seed=5, dtype=torch.bfloat16, **SHAPE, **extra)
    session = sim_session(path)
    assert dict(session.inspection.plan)["decode fast path"] == "on"
    spies = _spy_experts(session.fast) if layout == "fused" else []
    # two steps where the MoE layer runs (the second reads the cache and DeltaNet state the first
    # wrote); the dense sibling shares those kernels, one step is enough for its MLP (CI time)
    errors = compare_steps(session, list(range(3, 12)), steps=2 if layout == "fused" else 1)
    print(layout, "rel errors", errors)
    assert max(errors) < REL_TOL, errors
    for spy in spies:  # our routing: bf16-rounded fp32 weights, a bf16 gate logit
        ids, w, logit = spy.calls[-1]
        assert w.dtype == torch.float32 and torch.equal(w, w.bfloat16().float())
        assert torch.allclose(w.sum(-1), torch.ones(1), atol=2e-2) and ids.unique().numel() == ids.numel()
        assert torch.equal(logit, logit.bfloat16().float()) and torch.isfinite(logit).all()


class _Spy:
    """The bound experts, recording what each call reads."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, x, ids, weights, out, **kw):
        self.calls.append((ids.clone(), weights.clone(), kw["shared_gate_logit"].clone()))
        return self.inner(x, ids, weights, out, **kw)


def _spy_experts(fast) -> list:
    moes = [mlp for _, _, mlp in fast.model.layers]
    assert all(m.shared is None and m.shared_gate is None for m in moes)  # the fused shared expert
    for m in moes:
        m.experts = _Spy(m.experts)
    return [m.experts for m in moes]
