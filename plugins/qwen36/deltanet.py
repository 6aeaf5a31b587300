"""Qwen3.5/3.6 Gated DeltaNet layer (transformers 5.24 ``Qwen3_5MoeGatedDeltaNet``), built on imp_core.layers.gated_delta
and imp_core.layers.causal_conv.

in_proj_qkv -> causal depthwise conv (kernel K, act dtype) + silu over q|k|v; key heads repeated
(interleaved) to the value heads, q and k L2-normalised, q scaled by dk^-0.5; beta = sigmoid(b)
(from in_proj_b), g = -exp(A_log) · softplus(a + dt_bias) (a from in_proj_a); the gated delta
rule in fp32 (chunked for T > 1 from the cached state, recurrent for the T = 1 decode step); the
gated output norm w · RMSNorm(o) · silu(z) and out_proj. The per-layer state (conv columns and
the fp32 recurrent state) lives in a preallocated ``DeltaNetState`` and is updated in place.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from imp_core.layers.causal_conv import causal_conv1d, new_conv_state
from imp_core.layers.gated_delta import (chunk_gated_delta_rule, fla_chunk, fla_installed, gated_rms_norm,
                                        prefill_rule, recurrent_gated_delta_rule)
from imp_core.layers.linear import Linear
from imp_core.layers.mlp import activation
from imp_qwen36.config import Qwen36Config
from imp_core.model.loading import checked


class DeltaNetState:
    """One DeltaNet layer's carried state: conv [B, conv_dim, K-1] (act dtype), recurrent
    [B, Hv, dk, dv] (fp32 whatever the model dtype)."""

    def __init__(self, cfg: Qwen36Config, batch: int, *, dtype: torch.dtype, device: torch.device) -> None:
        self.conv = new_conv_state(batch, cfg.conv_dim, cfg.linear_conv_kernel_dim, dtype=dtype, device=device)
        self.recurrent = torch.zeros(batch, cfg.linear_num_value_heads, cfg.linear_key_head_dim,
                                     cfg.linear_value_head_dim, dtype=torch.float32, device=device)

    def reset(self) -> None:
        self.conv.zero_()
        self.recurrent.zero_()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.conv, self.recurrent))


def state_bytes_per_sequence(cfg: Qwen36Config, dtype: torch.dtype) -> int:
    """Bytes of one sequence's DeltaNet state over all linear-attention layers."""
    act = torch.empty(0, dtype=dtype).element_size()
    conv = cfg.conv_dim * (cfg.linear_conv_kernel_dim - 1) * act
    rec = cfg.linear_num_value_heads * cfg.linear_key_head_dim * cfg.linear_value_head_dim * 4
    return (conv + rec) * len(cfg.linear_layers)


class GatedDeltaNet:
    def __init__(self, cfg: Qwen36Config, w: Any, prefix: str) -> None:
        p = prefix + "linear_attn."
        hid, hv = cfg.hidden_size, cfg.linear_num_value_heads
        self.key_dim, self.value_dim = cfg.linear_key_dim, cfg.linear_value_dim
        self.dk, self.dv = cfg.linear_key_head_dim, cfg.linear_value_head_dim
        self.in_qkv = Linear(checked(w, p + "in_proj_qkv.weight", (cfg.conv_dim, hid)))
        self.in_z = Linear(checked(w, p + "in_proj_z.weight", (self.value_dim, hid)))
        self.in_b = Linear(checked(w, p + "in_proj_b.weight", (hv, hid)))
        self.in_a = Linear(checked(w, p + "in_proj_a.weight", (hv, hid)))
        conv = checked(w, p + "conv1d.weight", (cfg.conv_dim, 1, cfg.linear_conv_kernel_dim))
        self.conv_weight = conv[:, 0, :]
        # cast to the model dtype as transformers does (the published files store these in fp32)
        self.dt_bias = checked(w, p + "dt_bias", (hv,))
        if p + "A" in w:  # GGUF stores the decay rate -exp(A_log) itself (ssm_a)
            self.neg_a = checked(w, p + "A", (hv,), dtype=torch.float32)
        else:
            self.neg_a = -checked(w, p + "A_log", (hv,)).float().exp()
        self.norm_weight = checked(w, p + "norm.weight", (self.dv,))
        self.out = Linear(checked(w, p + "out_proj.weight", (hid, self.value_dim)))
        self.eps = cfg.rms_norm_eps
        self.act = activation(cfg.hidden_act)

    def __call__(self, x: torch.Tensor, state: DeltaNetState) -> torch.Tensor:
        b, t, _ = x.shape
        mixed = causal_conv1d(self.in_qkv(x).transpose(1, 2), self.conv_weight, state.conv,
                              activation=self.act).transpose(1, 2)
        q, k, v = torch.split(mixed, [self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q = q.reshape(b, t, -1, self.dk)
        k = k.reshape(b, t, -1, self.dk)
        v = v.reshape(b, t, -1, self.dv)
        beta = self.in_b(x).sigmoid()
        g = self.neg_a * F.softplus(self.in_a(x).float() + self.dt_bias)
        if t == 1:
            rule = recurrent_gated_delta_rule
        else:
            chosen, _ = prefill_rule(x.device.type, x.dtype, x.is_cuda and fla_installed())
            rule = fla_chunk if chosen == "fla" else chunk_gated_delta_rule
        o, final = rule(q, k, v, g, beta, state.recurrent)
        state.recurrent.copy_(final)
        z = self.in_z(x).reshape(b, t, -1, self.dv)
        o = gated_rms_norm(o, z, self.norm_weight, self.eps)
        return self.out(o.reshape(b, t, self.value_dim))
