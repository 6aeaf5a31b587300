"""The sampler on the fast path: the device sampling kernel where it reproduces ``Sampler``.

``DeviceSampler`` keeps ``Sampler``'s state (seeded row keys, the device step counter, the
penalty history) and replaces ``sample`` with two kernel launches instead of ~80 small torch
ops; the tokens are Sampler's (same counter hash, same filters). Settings the kernel lacks
(the repetition penalty, top-p/min-p without top-k, a large top-k) keep ``Sampler``.
"""

from __future__ import annotations

import torch

from imp_core.run.sampling import Sampler, SamplingParams


class DeviceSampler(Sampler):
    def __init__(self, params: SamplingParams, vocab_size: int, device: torch.device | str, batch: int = 1):
        super().__init__(params, vocab_size, device, batch)
        from imp_kernels import sample

        self._kernel = sample
        self._plan = sample.sample_plan(params, vocab_size, batch, self.device)
        self._tokens = torch.zeros(batch, dtype=torch.int64, device=self.device)

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        self._kernel.sample(logits.contiguous(), self._row_keys, self._step, self._tokens, plan=self._plan)
        return self._tokens


def fast_sampler(params: SamplingParams, vocab_size: int, device: torch.device) -> tuple[Sampler, str]:
    """(the sampler to use, a plan line saying which and why)."""
    from imp_kernels.sample import supported

    why = supported(params, vocab_size)
    if why is None:
        return DeviceSampler(params, vocab_size, device), "device kernel (imp_kernels.sample)"
    return Sampler(params, vocab_size, device), f"torch ops ({why})"
