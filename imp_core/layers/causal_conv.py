"""Depthwise causal conv1d over time with a carried state (the short conv of linear-attention
and state-space layers: Gated DeltaNet, Mamba).

y[t, c] = Σ_{j<K} w[c, j] · x[t-K+1+j, c], where positions before the sequence start read the
state: the last K-1 *pre-conv* input columns of the previous call (zeros for a fresh sequence).

Layout: x and y are [B, C, T] (channels first, as ``F.conv1d`` wants); the state is
[B, C, K-1] in the activation dtype, preallocated by the caller and updated in place, so a
single-token step does no allocation of persistent memory and no host sync. transformers keeps
K columns (its oldest column is never read by the next step); K-1 is the same arithmetic.

Both functions compute with ``F.conv1d`` in the input dtype, as transformers' torch fallbacks
(``causal_conv1d_fn`` / ``causal_conv1d_update``) do, so bf16 results round the same way.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def new_conv_state(batch: int, channels: int, kernel: int, *, dtype: torch.dtype,
                   device: torch.device) -> torch.Tensor:
    """A zeroed state buffer [B, C, K-1]."""
    return torch.zeros(batch, channels, kernel - 1, dtype=dtype, device=device)


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, state: torch.Tensor | None = None, *,
                  activation: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Causal depthwise conv of x [B, C, T] with weight [C, K] after ``state`` [B, C, K-1].

    ``state`` (if given) supplies the K-1 columns before x and is overwritten in place with the
    last K-1 columns of [state | x]; without it the sequence starts from zeros. Works for any
    T >= 1 (T = 1 is the decode step). Returns activation(y), [B, C, T], in x's dtype.
    """
    c, kernel = weight.shape
    if state is None:
        full = F.pad(x, (kernel - 1, 0))
    else:
        full = torch.cat((state.to(x.dtype), x), dim=-1)
        if kernel > 1:
            state.copy_(full[..., full.shape[-1] - (kernel - 1):])
    y = F.conv1d(full, weight.to(x.dtype).unsqueeze(1), groups=c)
    return activation(y) if activation is not None else y
