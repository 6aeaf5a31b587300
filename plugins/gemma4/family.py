"""The Gemma-4 family object that imp's core loads through the registered builder."""

from __future__ import annotations

from typing import Callable

import torch

from imp_core.checkpoint.base import Checkpoint
from imp_core.model.family import Family, parse_config
from imp_core.plugin.plan_types import ModelInfo
from imp_core.model.weights import WeightStore
from imp_core.units import human_bytes
from imp_gemma4.config import Gemma4Config, load_config
from imp_gemma4.policy import FAMILY, Gemma4AttentionLayerSpec


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()




class Gemma4Family(Family):
    name = FAMILY
    transformers_classes = ("Gemma4TextConfig", "Gemma4ForCausalLM")

    def parse_config(self, checkpoint: Checkpoint) -> Gemma4Config:
        return load_config(checkpoint)

    def config_from_dict(self, data: dict) -> Gemma4Config:
        return parse_config(Gemma4Config, data, "config dict")

    def model_info(self, cfg: Gemma4Config, checkpoint: Checkpoint | None) -> ModelInfo:
        layers = tuple(
            Gemma4AttentionLayerSpec(index=layer.index, kind=layer.kind, num_heads=cfg.num_attention_heads,
                                     num_kv_heads=layer.num_kv_heads, head_dim=layer.head_dim,
                                     sliding_window=layer.sliding_window, scale=1.0, k_eq_v=layer.k_eq_v)
            for layer in cfg.layers)
        return ModelInfo(family=self.name, architecture=cfg.architecture, num_layers=cfg.num_hidden_layers,
                         hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size,
                         layer_kinds=("attention",) * cfg.num_hidden_layers, attention_layers=layers,
                         is_moe=cfg.enable_moe_block, num_experts=cfg.num_experts if cfg.enable_moe_block else 0,
                         experts_per_token=cfg.top_k_experts if cfg.enable_moe_block else 0)

    has_fast_decode = True

    def presets(self):
        from imp_gemma4.presets import PRESETS

        return PRESETS

    def format_mixes(self):
        from imp_gemma4.presets import FORMAT_MIXES

        return FORMAT_MIXES

    def fast_model(self, model):
        from imp_gemma4.decode import Gemma4Fast

        return Gemma4Fast(model)

    def build(self, cfg: Gemma4Config, weights: WeightStore):
        from imp_gemma4.model import Gemma4Model

        return Gemma4Model(cfg, weights, self.model_info(cfg, weights.checkpoint))

    def rename(self, cfg: Gemma4Config, checkpoint: Checkpoint) -> Callable[[str], str | None] | None:
        if not cfg.tie_word_embeddings:
            return None
        # a tied checkpoint that still stores lm_head.weight: transformers ties it away, so do we
        return lambda name: None if name == "lm_head.weight" else name

    # -- GGUF (gemma4; imp_core.checkpoint.gguf_names) ---------------------------------------
    def gguf_names(self):
        from imp_gemma4.names import GGUF_NAMES

        return GGUF_NAMES

    def config_from_gguf(self, metadata: dict, tensors: dict, *, where: str) -> dict:
        from imp_gemma4.gguf import config_from_gguf

        return config_from_gguf(metadata, tensors, where=where)

    def gguf_transforms(self, cfg: Gemma4Config, metadata: dict) -> dict:
        return {}  # Gemma-4 files change names only (no norm shift, no Q/K permutation)

    def tokenizer(self, cfg: Gemma4Config, checkpoint: Checkpoint):
        """The ``gemma4`` GGUF vocabulary (BPE with the file's merges); None: the core's tokenizer."""
        if checkpoint.format != "gguf" or checkpoint.metadata.get("tokenizer.ggml.model") != "gemma4":
            return None
        from imp_gemma4.gguf import gemma4_tokenizer

        return gemma4_tokenizer(checkpoint.metadata, source=str(checkpoint.path))

    def max_context(self, cfg: Gemma4Config) -> int:
        return cfg.max_position_embeddings

    # -- cache size ----------------------------------------------------------------------
    def cache_bytes_per_token(self, cfg: Gemma4Config, dtype: torch.dtype) -> int:
        """K+V bytes one more token costs once the sliding rings are full: the global layers only."""
        return sum(2 * layer.num_kv_heads * layer.head_dim for layer in cfg.layers
                   if not layer.sliding_window) * _itemsize(dtype)

    def sliding_cache_bytes(self, cfg: Gemma4Config, dtype: torch.dtype) -> int:
        """K+V bytes of every sliding ring at full window (fixed, whatever the context)."""
        return sum(2 * layer.num_kv_heads * layer.head_dim * layer.sliding_window for layer in cfg.layers
                   if layer.sliding_window) * _itemsize(dtype)

    def cache_bytes(self, cfg: Gemma4Config, dtype: torch.dtype, context: int) -> int:
        """Every K/V byte ``new_cache(1, context)`` allocates."""
        from imp_gemma4.model import cache_capacity

        return sum(2 * layer.num_kv_heads * layer.head_dim * cache_capacity(layer, context)
                   for layer in cfg.layers) * _itemsize(dtype)

    # -- text for `imp info` -------------------------------------------------------------
    def describe(self, cfg: Gemma4Config) -> list[tuple[str, str]]:
        sliding = [layer for layer in cfg.layers if layer.sliding_window]
        full = [layer for layer in cfg.layers if not layer.sliding_window]
        rows = [("layers", f"{cfg.num_hidden_layers}: {len(sliding)} sliding + {len(full)} global "
                           f"(global at {', '.join(str(layer.index) for layer in full)})")]
        if sliding:
            s = sliding[0]
            rows.append(("sliding attention", f"{cfg.num_attention_heads}/{s.num_kv_heads} heads of {s.head_dim}, "
                                              f"window {s.sliding_window} (incl. the current token), "
                                              f"rope {cfg.rope['sliding_attention'].describe(s.head_dim)}"))
        if full:
            g = full[0]
            rows.append(("global attention", f"{cfg.num_attention_heads}/{g.num_kv_heads} heads of {g.head_dim}"
                                             f"{', K=V (no v_proj)' if g.k_eq_v else ''}, "
                                             f"rope {cfg.rope['full_attention'].describe(g.head_dim)}"))
        ff = f"dense GeGLU {cfg.intermediate_size}"
        if cfg.enable_moe_block:
            ff += (f" + MoE {cfg.num_experts} experts top-{cfg.top_k_experts} of {cfg.moe_intermediate_size} "
                   f"(parallel, every layer)")
        rows += [("feed-forward", ff),
                 ("hidden / vocab", f"{cfg.hidden_size} / {cfg.vocab_size}"),
                 ("logits", f"{'tied' if cfg.tie_word_embeddings else 'separate'} lm_head, softcap "
                            f"{cfg.final_logit_softcapping if cfg.final_logit_softcapping else 'none'}"),
                 ("max context", str(cfg.max_position_embeddings))]
        bf16 = torch.bfloat16
        rows.append(("kv cache (bf16)", f"{human_bytes(self.cache_bytes_per_token(cfg, bf16))}/token in {len(full)} "
                                        f"global layers + {human_bytes(self.sliding_cache_bytes(cfg, bf16))} fixed in "
                                        f"{len(sliding)} sliding rings (the window's worth)"))
        return rows

    # -- random weights at real shapes ------------------------------------------------------
    def synthetic_spec(self, cfg: Gemma4Config) -> dict:
        h, v = cfg.hidden_size, cfg.vocab_size
        spec = {"model.embed_tokens.weight": ((v, h), "normal"), "model.norm.weight": ((h,), "ones")}
        if not cfg.tie_word_embeddings:
            spec["lm_head.weight"] = ((v, h), "normal")
        for layer in cfg.layers:
            p = f"model.layers.{layer.index}."
            d, kv, nh = layer.head_dim, layer.num_kv_heads, cfg.num_attention_heads
            spec.update({p + n + ".weight": ((h,), "ones") for n in (
                "input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                "post_feedforward_layernorm")})
            spec.update({
                p + "layer_scalar": ((1,), "ones"),
                p + "self_attn.q_proj.weight": ((nh * d, h), "normal"),
                p + "self_attn.k_proj.weight": ((kv * d, h), "normal"),
                p + "self_attn.o_proj.weight": ((h, nh * d), "normal"),
                p + "self_attn.q_norm.weight": ((d,), "ones"),
                p + "self_attn.k_norm.weight": ((d,), "ones"),
                p + "mlp.gate_proj.weight": ((cfg.intermediate_size, h), "normal"),
                p + "mlp.up_proj.weight": ((cfg.intermediate_size, h), "normal"),
                p + "mlp.down_proj.weight": ((h, cfg.intermediate_size), "normal"),
            })
            if not layer.k_eq_v:
                spec[p + "self_attn.v_proj.weight"] = ((kv * d, h), "normal")
            if cfg.enable_moe_block:
                e, mi = cfg.num_experts, cfg.moe_intermediate_size
                spec.update({p + n + ".weight": ((h,), "ones") for n in (
                    "post_feedforward_layernorm_1", "pre_feedforward_layernorm_2", "post_feedforward_layernorm_2")})
                spec.update({
                    p + "router.proj.weight": ((e, h), "normal"),
                    p + "router.scale": ((h,), "ones"),
                    p + "router.per_expert_scale": ((e,), "ones"),
                    p + "experts.gate_up_proj": ((e, 2 * mi, h), "normal"),
                    p + "experts.down_proj": ((e, h, mi), "normal"),
                })
        return spec
