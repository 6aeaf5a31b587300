"""One Gemma-4 decoder layer on the reference path (transformers 5.24 ``Gemma4TextDecoderLayer`` / ``Gemma4TextAttention``).

Every norm is ``Gemma4RMSNorm``: ``(x̂ · w)`` computed in fp32 with a plain weight (not 1+w), or
weightless (v_norm, the router's input norm). Attention scale is 1.0; on k_eq_v (global) layers V
is the raw k_proj output through the weightless norm, before k_norm and RoPE. The dense MLP and
the MoE read the same post-attention residual; the router reads it un-normed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imp_core.model.cache import KVCache
from imp_core.plugin.attention_registry import AttentionBackend
from imp_core.layers.linear import Linear, dense_weight
from imp_core.layers.mlp import GatedMLP
from imp_core.layers.moe import Experts, RouteTrace, softmax_topk
from imp_core.layers.norms import RMSNorm, rms_norm
from imp_core.layers.rope import apply_rotary
from imp_core.model.weights import WeightStore
from imp_gemma4.config import Gemma4Config, Gemma4LayerConfig
from imp_core.model.loading import checked, load_experts
from imp_gemma4.loading import per_expert_scale


class Gemma4Attention:
    """q/k norms, per-layer-type RoPE, optional K=V, scale 1.0, sliding window on sliding layers."""

    def __init__(self, cfg: Gemma4Config, layer: Gemma4LayerConfig, w: WeightStore, prefix: str) -> None:
        p = prefix + "self_attn."
        h, hid = cfg.num_attention_heads, cfg.hidden_size
        self.h, self.hkv, self.d = h, layer.num_kv_heads, layer.head_dim
        self.window = layer.sliding_window
        self.eps = cfg.rms_norm_eps
        self.q = Linear(checked(w, p + "q_proj.weight", (h * self.d, hid)))
        self.k = Linear(checked(w, p + "k_proj.weight", (self.hkv * self.d, hid)))
        self.v = None if layer.k_eq_v else Linear(checked(w, p + "v_proj.weight", (self.hkv * self.d, hid)))
        self.o = Linear(checked(w, p + "o_proj.weight", (hid, h * self.d)))
        self.q_norm = RMSNorm(checked(w, p + "q_norm.weight", (self.d,)), self.eps)
        self.k_norm = RMSNorm(checked(w, p + "k_norm.weight", (self.d,)), self.eps)

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                 cache: KVCache, backend: AttentionBackend) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_norm(self.q(x).view(b, t, self.h, self.d)).transpose(1, 2)
        k_raw = self.k(x).view(b, t, self.hkv, self.d)
        v_raw = k_raw if self.v is None else self.v(x).view(b, t, self.hkv, self.d)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(self.k_norm(k_raw).transpose(1, 2), cos, sin)
        v = rms_norm(v_raw, None, self.eps).transpose(1, 2)
        keys, values, key_pos = cache.update(k, v, positions)
        o = backend.run(q, keys, values, positions, key_pos, scale=1.0, window=self.window)
        return self.o(o.transpose(1, 2).reshape(b, t, self.h * self.d))


class Gemma4Router:
    """softmax_fp32(proj(RMS(x) · scale · hidden^-0.5)) -> top-k -> renormalise -> · per_expert_scale."""

    def __init__(self, cfg: Gemma4Config, w: WeightStore, prefix: str) -> None:
        p = prefix + "router."
        self.proj = checked(w, p + "proj.weight", (cfg.num_experts, cfg.hidden_size), keys="num_experts, hidden_size")
        self.scale = checked(w, p + "scale", (cfg.hidden_size,), keys="hidden_size")
        self.per_expert_scale = per_expert_scale(w, prefix, cfg.num_experts)
        self.root = cfg.hidden_size ** -0.5
        self.k, self.eps = cfg.top_k_experts, cfg.rms_norm_eps

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, H] (the raw residual) -> (weights [N, k] fp32, expert ids [N, k])."""
        rn = rms_norm(x, None, self.eps) * self.scale * self.root  # act dtype, transformers' op order
        logits = F.linear(rn, dense_weight(self.proj, rn.dtype))
        weights, ids = softmax_topk(logits, self.k, renormalize=True)
        return weights * self.per_expert_scale[ids], ids  # fp32 x act -> stays fp32


class Gemma4DecoderLayer:
    """Sandwich-normed attention, then the dense MLP beside the MoE, then ``x · layer_scalar``."""

    def __init__(self, cfg: Gemma4Config, layer: Gemma4LayerConfig, w: WeightStore) -> None:
        p = f"model.layers.{layer.index}."
        hid, eps = cfg.hidden_size, cfg.rms_norm_eps

        def norm(name: str) -> RMSNorm:
            return RMSNorm(checked(w, p + name + ".weight", (hid,), keys="hidden_size"), eps)

        self.input_norm = norm("input_layernorm")
        self.post_attention_norm = norm("post_attention_layernorm")
        self.pre_ff_norm = norm("pre_feedforward_layernorm")
        self.post_ff_norm = norm("post_feedforward_layernorm")
        self.attn = Gemma4Attention(cfg, layer, w, p)
        inter, keys = cfg.intermediate_size, "hidden_size, intermediate_size"
        self.mlp = GatedMLP(Linear(checked(w, p + "mlp.gate_proj.weight", (inter, hid), keys=keys)),
                            Linear(checked(w, p + "mlp.up_proj.weight", (inter, hid), keys=keys)),
                            Linear(checked(w, p + "mlp.down_proj.weight", (hid, inter), keys=keys)),
                            cfg.hidden_activation)
        self.moe = cfg.enable_moe_block
        if self.moe:
            e, mi = cfg.num_experts, cfg.moe_intermediate_size
            self.post_ff_norm_1 = norm("post_feedforward_layernorm_1")
            self.pre_ff_norm_2 = norm("pre_feedforward_layernorm_2")
            self.post_ff_norm_2 = norm("post_feedforward_layernorm_2")
            self.router = Gemma4Router(cfg, w, p)
            self.experts = Experts(*load_experts(w, p, e, hid, mi, keys="num_experts, hidden_size, moe_intermediate_size"),
                                   cfg.hidden_activation)
        self.layer_scalar = checked(w, p + "layer_scalar", (1,))

    def feed_forward(self, r: torch.Tensor) -> torch.Tensor:
        """Both feed-forward branches of the post-attention residual ``r``, before the outer norm."""
        d = self.mlp(self.pre_ff_norm(r))
        if not self.moe:
            return d
        flat = r.reshape(-1, r.shape[-1])
        weights, ids = self.router(flat)
        RouteTrace.record(ids, weights)
        e = self.experts(self.pre_ff_norm_2(flat), ids, weights).reshape(r.shape)
        return self.post_ff_norm_1(d) + self.post_ff_norm_2(e)

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                 cache: KVCache, backend: AttentionBackend) -> torch.Tensor:
        x = x + self.post_attention_norm(self.attn(self.input_norm(x), cos, sin, positions, cache, backend))
        x = x + self.post_ff_norm(self.feed_forward(x))
        return x * self.layer_scalar
