"""`imp check` under the CUDA simulator: passes on a tiny checkpoint, fails (exit 1, FAIL rows)
when the fast path computes something else."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from kernels_sim import sim_skip
from imp_core.cli.app import app
from imp_core.fast import ops
from tests.mistral_factory import write_checkpoint
from tests.test_fast_mistral_sim import SHAPE

pytestmark = sim_skip


def _check(path):
    return CliRunner().invoke(app, ["check", "--model", str(path), "--steps", "3", "--device", "cpu"])


def test_check_passes_and_catches_a_wrong_fast_path(tmp_path, monkeypatch):
    path = write_checkpoint(tmp_path / "m", "mistral", seed=3, dtype=torch.bfloat16, **SHAPE)
    res = _check(path)
    assert res.exit_code == 0, res.output
    assert "layer 0" in res.output and "layer 1" in res.output and "logits" in res.output
    assert "FAIL" not in res.output

    real = ops.gated_act

    def gate_and_up_swapped(gate_up, out, act):  # a layout bug: act(up) * gate
        i = out.shape[-1]
        return real(torch.cat([gate_up[..., i:], gate_up[..., :i]], dim=-1), out, act)

    monkeypatch.setattr(ops, "gated_act", gate_and_up_swapped)
    res = _check(path)
    assert res.exit_code == 1, res.output
    assert "FAIL" in res.output
