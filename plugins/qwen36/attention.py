"""Qwen3.5/3.6 gated full attention (transformers 5.24 ``Qwen3_5MoeAttention``).

q_proj holds query and output gate interleaved *per head* ([query(D) | gate(D)] for each head);
q and k get zero-centred (1+w) RMSNorms over the head dim; partial rotate-half RoPE on the first
``rotary_dim`` dims; causal GQA attention with scale D^-0.5; the output is multiplied by
sigmoid(gate) (in the activation dtype) before o_proj.
"""

from __future__ import annotations

from typing import Any

import torch

from imp_core.model.cache import KVCache
from imp_core.plugin.attention_registry import AttentionBackend
from imp_core.layers.linear import Linear
from imp_core.layers.norms import RMSNorm
from imp_core.layers.rope import apply_rotary
from imp_qwen36.config import Qwen36Config
from imp_core.model.loading import checked


def zero_centred_norm(weight: torch.Tensor, eps: float) -> RMSNorm:
    """Qwen's RMSNorm: x̂ · (1 + w), both in fp32, cast to the activation dtype."""
    return RMSNorm(weight, eps, mode="fp32", offset=1.0)


def split_query_gate(qg: torch.Tensor, heads: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q_proj output [B, T, H*2D] -> (query [B, T, H, D], gate [B, T, H*D]), per-head interleaved."""
    b, t, _ = qg.shape
    q, gate = qg.view(b, t, heads, 2 * head_dim).chunk(2, dim=-1)
    return q, gate.reshape(b, t, heads * head_dim)


class GatedAttention:
    def __init__(self, cfg: Qwen36Config, w: Any, prefix: str) -> None:
        h, hkv, d, hid = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        p = prefix + "self_attn."

        def linear(name: str, out: int, inp: int) -> Linear:
            bias = checked(w, p + name + ".bias", (out,)) if cfg.attention_bias else None
            return Linear(checked(w, p + name + ".weight", (out, inp)), bias)

        self.q = linear("q_proj", 2 * h * d, hid)
        self.k = linear("k_proj", hkv * d, hid)
        self.v = linear("v_proj", hkv * d, hid)
        self.o = linear("o_proj", hid, h * d)
        self.q_norm = zero_centred_norm(checked(w, p + "q_norm.weight", (d,)), cfg.rms_norm_eps)
        self.k_norm = zero_centred_norm(checked(w, p + "k_norm.weight", (d,)), cfg.rms_norm_eps)
        self.h, self.hkv, self.d = h, hkv, d
        self.scale = d ** -0.5

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                 cache: KVCache, backend: AttentionBackend) -> torch.Tensor:
        b, t, _ = x.shape
        q, gate = split_query_gate(self.q(x), self.h, self.d)
        q = self.q_norm(q).transpose(1, 2)
        k = self.k_norm(self.k(x).view(b, t, self.hkv, self.d)).transpose(1, 2)
        v = self.v(x).view(b, t, self.hkv, self.d).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        keys, values, key_pos = cache.update(k, v, positions)
        o = backend.run(q, keys, values, positions, key_pos, scale=self.scale, window=None)
        o = o.transpose(1, 2).reshape(b, t, self.h * self.d) * torch.sigmoid(gate)
        return self.o(o)
