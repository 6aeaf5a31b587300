"""The Qwen3.5/3.6 forward on the reference path (transformers 5.24 ``Qwen3_5MoeTextModel``).

Embedding (no scaling) -> per layer: x += Mixer(N(x)), x += FFN(N(x)) with zero-centred (1+w)
norms, the mixer a Gated DeltaNet (linear_attention layers) or gated full attention
(full_attention layers) -> final (1+w) norm -> untied lm_head. Text-only positions make the
interleaved mRoPE equal to plain 1-D RoPE over the first ``rotary_dim`` dims (shown in
tests/test_qwen36_layers.py), so one ``Rotary`` table serves every full-attention layer.
"""

from __future__ import annotations

from typing import Any

import torch

from imp_core.model.cache import KVCache, LayerCaches
from imp_core.model.family import CausalLM
from imp_core.plugin.attention_registry import AttentionBackend
from imp_core.layers.embedding import Embedding, LMHead
from imp_core.layers.rope import Rotary, default_inv_freq
from imp_core.plugin.plan_types import ModelInfo
from imp_qwen36.attention import GatedAttention, zero_centred_norm
from imp_qwen36.config import FULL, Qwen36Config
from imp_core.layers.gated_delta import fla_installed, prefill_rule
from imp_qwen36.deltanet import DeltaNetState, GatedDeltaNet
from imp_core.model.loading import checked
from imp_qwen36.moe import build_mlp


class Qwen36Layer:
    def __init__(self, cfg: Qwen36Config, w: Any, i: int) -> None:
        p = f"model.layers.{i}."
        h = cfg.hidden_size
        self.full = cfg.layer_types[i] == FULL
        self.input_norm = zero_centred_norm(checked(w, p + "input_layernorm.weight", (h,), keys="hidden_size"), cfg.rms_norm_eps)
        self.post_norm = zero_centred_norm(checked(w, p + "post_attention_layernorm.weight", (h,), keys="hidden_size"),
                                           cfg.rms_norm_eps)
        self.mixer = GatedAttention(cfg, w, p) if self.full else GatedDeltaNet(cfg, w, p)
        self.mlp = build_mlp(cfg, w, p)

    def __call__(self, x, cos, sin, positions, cache, backend: AttentionBackend) -> torch.Tensor:
        n = self.input_norm(x)
        if self.full:
            x = x + self.mixer(n, cos, sin, positions, cache, backend)
        else:
            x = x + self.mixer(n, cache)
        return x + self.mlp(self.post_norm(x))


class Qwen36Model(CausalLM):
    def __init__(self, cfg: Qwen36Config, w: Any, info: ModelInfo) -> None:
        self.cfg, self.info = cfg, info
        self.device, self.dtype = w.device, w.dtype
        v, h = cfg.vocab_size, cfg.hidden_size
        self.embed = Embedding(checked(w, "model.embed_tokens.weight", (v, h), keys="vocab_size, hidden_size"))
        self.layers = [Qwen36Layer(cfg, w, i) for i in range(cfg.num_hidden_layers)]
        self.norm = zero_centred_norm(checked(w, "model.norm.weight", (h,), keys="hidden_size"), cfg.rms_norm_eps)
        head = checked(w, "lm_head.weight", (v, h), keys="vocab_size, hidden_size") if "lm_head.weight" in w else self.embed.weight
        self.lm_head = LMHead(head)
        self.rotary = Rotary(default_inv_freq(cfg.rope_theta, cfg.rotary_dim)).to(self.device)

    def prefill_notes(self) -> list[str]:
        rule, why = prefill_rule(self.device.type, self.dtype, self.device.type == "cuda" and fla_installed())
        return [f"gated delta rule: {rule} ({why})"] if self.cfg.linear_layers else []

    def new_cache(self, batch: int, context: int) -> LayerCaches:
        cfg = self.cfg
        layers: list[KVCache | DeltaNetState] = []
        for kind in cfg.layer_types:
            if kind == FULL:
                layers.append(KVCache(batch=batch, num_kv_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim,
                                      capacity=context, dtype=self.dtype, device=self.device))
            else:
                layers.append(DeltaNetState(cfg, batch, dtype=self.dtype, device=self.device))
        return LayerCaches(layers)

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, positions: torch.Tensor, cache: LayerCaches, *,
                last_only: bool = False) -> torch.Tensor:
        """ids [B, T] at positions [T] -> logits [B, T or 1, V] fp32.

        T == 1 runs the recurrent DeltaNet step (the capture-ready decode step); T > 1 runs the
        chunked form from the cached state, so a prompt may be fed in several pieces.
        """
        x = self.embed(ids)
        cos, sin = self.rotary.cos_sin(positions, x.dtype)
        for i, (layer, c) in enumerate(zip(self.layers, cache.layers)):
            x = layer(x, cos, sin, positions, c, self.attention_for(i))
            if self.layer_trace is not None:
                self.layer_trace.append(x[:, -1].clone())
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x)).float()
