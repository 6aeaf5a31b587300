"""Qwen3.6's fused MoE decode under the CUDA simulator: one router launch gives the experts their
ids, bf16-rounded fp32 weights and the shared-expert gate logit, and in check mode (``imp check``'s
``follow_routing``) the experts read the reference's routing instead, rounded to bf16 as before."""

from __future__ import annotations

import torch

from imp_core.run.generator import Generator
from kernels_sim import sim_skip
from tests.fast_sim import sim_session
from tests.qwen36_factory import write_checkpoint
from tests.test_fast_qwen36_sim import SHAPE

pytestmark = sim_skip


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


def test_fused_moe_routing_and_check_mode(tmp_path):
    path = write_checkpoint(tmp_path / "fused", "fused", seed=5, dtype=torch.bfloat16, **SHAPE, num_experts=4,
                            moe_intermediate_size=32, shared_expert_intermediate_size=32)
    session = sim_session(path)
    fast = session.fast
    moes = [mlp for _, _, mlp in fast.model.layers]
    assert all(m.shared is None and m.shared_gate is None for m in moes)  # the fused shared expert
    spies = []
    for m in moes:
        m.experts = _Spy(m.experts)
        spies.append(m.experts)
    gen = Generator(session.model, context=64, decoder=fast.decoder)
    gen.token_buf.fill_(int(gen.prefill(list(range(3, 12))).argmax(-1)))
    gen.decode_step()
    for spy in spies:  # our routing: bf16-rounded fp32 weights, a bf16 gate logit
        ids, w, logit = spy.calls[-1]
        assert w.dtype == torch.float32 and torch.equal(w, w.bfloat16().float())
        assert torch.allclose(w.sum(-1), torch.ones(1), atol=2e-2) and ids.unique().numel() == ids.numel()
        assert torch.equal(logit, logit.bfloat16().float()) and torch.isfinite(logit).all()

    # check mode: the reference's ids and weights (fp32 here, not bf16-exact) replace ours
    k = session.model.cfg.num_experts_per_tok
    forced = [(torch.arange(k).flip(0).view(1, k) + i, torch.linspace(0.7, 0.3, k).view(1, k))
              for i in range(len(moes))]
    dec = gen.decoder
    dec.forced_routes, dec.routes = list(forced), []
    gen.token_buf.fill_(5)
    gen.decode_step()
    assert dec.forced_routes == [] and len(dec.routes) == len(moes)
    for (ids_ref, w_ref), spy, ours in zip(forced, spies, dec.routes):
        ids, w, _ = spy.calls[-1]
        assert torch.equal(ids.long(), ids_ref)
        assert torch.equal(w, w_ref.bfloat16().float())
        assert ours.shape == ids_ref.shape  # our own choice, recorded before the reference's replaced it
    dec.forced_routes = dec.routes = None
