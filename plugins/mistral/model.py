"""The Mistral forward on the reference path (transformers 5.24 ``MistralModel``), built from imp_core.layers."""

from __future__ import annotations

import torch

from imp_core.model.cache import KVCache, LayerCaches
from imp_core.model.family import CausalLM
from imp_core.model.loading import checked
from imp_core.plugin.attention_registry import AttentionBackend
from imp_core.layers.embedding import Embedding, LMHead
from imp_core.layers.linear import Linear
from imp_core.layers.mlp import GatedMLP
from imp_core.layers.norms import RMSNorm
from imp_core.layers.rope import Rotary, apply_rotary, default_inv_freq
from imp_core.plugin.plan_types import ModelInfo
from imp_core.model.weights import WeightStore
from imp_mistral.config import MistralConfig


class MistralLayer:
    def __init__(self, cfg: MistralConfig, w: WeightStore, i: int) -> None:
        p = f"model.layers.{i}."
        h, d, inter = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
        q_rows, kv_rows = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
        attn_keys = "hidden_size, num_attention_heads, num_key_value_heads, head_dim"
        mlp_keys = "hidden_size, intermediate_size"

        def get(name: str, shape: tuple[int, ...], keys: str):
            return checked(w, p + name, shape, keys=keys)

        norm = dict(eps=cfg.rms_norm_eps, mode="llama")
        self.input_norm = RMSNorm(get("input_layernorm.weight", (h,), "hidden_size"), **norm)
        self.post_norm = RMSNorm(get("post_attention_layernorm.weight", (h,), "hidden_size"), **norm)
        self.q = Linear(get("self_attn.q_proj.weight", (q_rows, h), attn_keys))
        self.k = Linear(get("self_attn.k_proj.weight", (kv_rows, h), attn_keys))
        self.v = Linear(get("self_attn.v_proj.weight", (kv_rows, h), attn_keys))
        self.o = Linear(get("self_attn.o_proj.weight", (h, q_rows), attn_keys))
        self.mlp = GatedMLP(Linear(get("mlp.gate_proj.weight", (inter, h), mlp_keys)),
                            Linear(get("mlp.up_proj.weight", (inter, h), mlp_keys)),
                            Linear(get("mlp.down_proj.weight", (h, inter), mlp_keys)), cfg.hidden_act)
        self.h, self.hkv, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.scale = cfg.head_dim ** -0.5
        self.window = cfg.sliding_window

    def attention(self, x, cos, sin, positions, cache: KVCache, backend: AttentionBackend):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.h, self.d).transpose(1, 2)
        k = self.k(x).view(b, t, self.hkv, self.d).transpose(1, 2)
        v = self.v(x).view(b, t, self.hkv, self.d).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        keys, values, key_pos = cache.update(k, v, positions)
        o = backend.run(q, keys, values, positions, key_pos, scale=self.scale, window=self.window)
        return self.o(o.transpose(1, 2).reshape(b, t, self.h * self.d))

    def __call__(self, x, cos, sin, positions, cache, backend):
        x = x + self.attention(self.input_norm(x), cos, sin, positions, cache, backend)
        return x + self.mlp(self.post_norm(x))


class MistralModel(CausalLM):
    def __init__(self, cfg: MistralConfig, w: WeightStore, info: ModelInfo) -> None:
        self.cfg, self.info = cfg, info
        self.device, self.dtype = w.device, w.dtype
        vh, vh_keys = (cfg.vocab_size, cfg.hidden_size), "vocab_size, hidden_size"
        self.embed = Embedding(checked(w, "model.embed_tokens.weight", vh, keys=vh_keys))
        self.layers = [MistralLayer(cfg, w, i) for i in range(cfg.num_hidden_layers)]
        self.norm = RMSNorm(checked(w, "model.norm.weight", (cfg.hidden_size,), keys="hidden_size"),
                            cfg.rms_norm_eps, mode="llama")
        head = checked(w, "lm_head.weight", vh, keys=vh_keys) if "lm_head.weight" in w else self.embed.weight
        self.lm_head = LMHead(head)
        self.rotary = Rotary(default_inv_freq(cfg.rope_theta, cfg.head_dim)).to(self.device)

    def new_cache(self, batch: int, context: int) -> LayerCaches:
        cfg = self.cfg
        cap = min(context, cfg.sliding_window) if cfg.sliding_window else context
        return LayerCaches([
            KVCache(batch=batch, num_kv_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, capacity=cap,
                    dtype=self.dtype, device=self.device, window=cfg.sliding_window)
            for _ in range(cfg.num_hidden_layers)])

    @torch.inference_mode()
    def forward(self, ids, positions, cache: LayerCaches, *, last_only: bool = False):
        x = self.embed(ids)
        cos, sin = self.rotary.cos_sin(positions, x.dtype)
        for i, (layer, c) in enumerate(zip(self.layers, cache.layers)):
            x = layer(x, cos, sin, positions, c, self.attention_for(i))
            if self.layer_trace is not None:
                self.layer_trace.append(x[:, -1].clone())
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x)).float()
