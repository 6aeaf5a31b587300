"""Shared driver for the fast-path simulator tests: the fast decode step of a tiny bf16 checkpoint
against the reference path, token by token (teacher-forced with the reference's greedy tokens).

Both paths start from the same prefill (the reference forward) and are fed the same tokens, so
each step's logits compare one decode step, not an accumulated drift. Tolerance: the kernels
accumulate in fp32 in a different order than torch's bf16 matmuls and round some intermediates
differently (bf16 in both paths), so logits agree to a few bf16 ulps of their scale.
"""

from __future__ import annotations

from pathlib import Path

import torch

from imp_core.plugin.manager import load_plugins
from imp_core.run.generator import Generator
from imp_core.run.session import load_session
from imp_core.settings.resolve import load_settings

#: max |fast - reference| over max |reference| per step: 16 bf16 ulps (2^-8 relative each) of
#: headroom over a handful of roundings; a wrong formula is off by O(1)
REL_TOL = 16 * 2.0 ** -8


def sim_session(path: Path, **flags):
    resolved = load_settings(cli_flags={"runtime.device": "cpu", "runtime.dtype": "bfloat16",
                                        "runtime.fast_path": "on", **flags},
                             env={}, user_config=path / "no-user-config.toml")
    return load_session(path, resolved, load_plugins(env={}), progress=False)


def compare_steps(session, prompt: list[int], steps: int) -> list[float]:
    """Relative logit error per decode step; asserts the fast path is bound and agrees."""
    assert session.fast is not None, session.inspection.fast_path_reasons
    model = session.model
    ref = Generator(model, context=64)
    fast = Generator(model, context=64, decoder=session.fast.decoder)
    ref_logits = ref.prefill(prompt)
    fast.prefill(prompt)
    token = int(ref_logits.argmax(-1))
    errors = []
    for _ in range(steps):
        for g in (ref, fast):
            g.token_buf.fill_(token)
        a = ref.decode_step().float()
        b = fast.decode_step().float()
        assert torch.isfinite(b).all()
        errors.append(float((a - b).abs().max() / a.abs().max()))
        token = int(a.argmax(-1))
    return errors
