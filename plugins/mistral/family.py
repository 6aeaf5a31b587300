"""The Mistral family object that imp's core loads through the registered builder."""

from __future__ import annotations

import torch

from imp_core.checkpoint.base import Checkpoint
from imp_core.model.family import Family
from imp_core.plugin.plan_types import AttentionLayerSpec, ModelInfo
from imp_core.model.weights import WeightStore
from imp_core.model.family import parse_config
from imp_mistral.config import MistralConfig, load_config


class MistralFamily(Family):
    name = "mistral"
    transformers_classes = ("MistralConfig", "MistralForCausalLM")

    def parse_config(self, checkpoint: Checkpoint) -> MistralConfig:
        return load_config(checkpoint)

    def model_info(self, cfg: MistralConfig, checkpoint: Checkpoint) -> ModelInfo:
        kind = "sliding" if cfg.sliding_window else "full"
        layers = tuple(
            AttentionLayerSpec(index=i, kind=kind, num_heads=cfg.num_attention_heads,
                               num_kv_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim,
                               sliding_window=cfg.sliding_window, scale=cfg.head_dim ** -0.5)
            for i in range(cfg.num_hidden_layers))
        return ModelInfo(family=self.name, architecture=cfg.architecture,
                         num_layers=cfg.num_hidden_layers, hidden_size=cfg.hidden_size,
                         vocab_size=cfg.vocab_size, layer_kinds=("attention",) * cfg.num_hidden_layers,
                         attention_layers=layers)

    has_fast_decode = True

    def presets(self):
        from imp_mistral.presets import PRESETS

        return PRESETS

    def format_mixes(self):
        from imp_mistral.presets import FORMAT_MIXES

        return FORMAT_MIXES

    def fast_model(self, model):
        from imp_mistral.decode import MistralFast

        return MistralFast(model)

    def build(self, cfg: MistralConfig, weights: WeightStore):
        from imp_mistral.model import MistralModel

        return MistralModel(cfg, weights, self.model_info(cfg, weights.checkpoint))

    # -- GGUF (imp_core.checkpoint.gguf_names) ------------------------------------------------
    def gguf_names(self):
        from imp_mistral.names import GGUF_NAMES

        return GGUF_NAMES

    def config_from_gguf(self, metadata: dict, tensors: dict, *, where: str) -> dict:
        from imp_mistral.gguf import config_from_gguf

        return config_from_gguf(metadata, tensors, where=where)

    def gguf_transforms(self, cfg: MistralConfig, metadata: dict) -> dict:
        from imp_mistral.gguf import gguf_transforms

        return gguf_transforms(cfg)

    def config_from_dict(self, data: dict) -> MistralConfig:
        return parse_config(MistralConfig, data, "config dict")

    def synthetic_spec(self, cfg: MistralConfig) -> dict:
        h, d, inter = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
        spec = {"model.embed_tokens.weight": ((cfg.vocab_size, h), "normal"),
                "model.norm.weight": ((h,), "ones"),
                "lm_head.weight": ((cfg.vocab_size, h), "normal")}
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            spec.update({
                p + "input_layernorm.weight": ((h,), "ones"),
                p + "post_attention_layernorm.weight": ((h,), "ones"),
                p + "self_attn.q_proj.weight": ((cfg.num_attention_heads * d, h), "normal"),
                p + "self_attn.k_proj.weight": ((cfg.num_key_value_heads * d, h), "normal"),
                p + "self_attn.v_proj.weight": ((cfg.num_key_value_heads * d, h), "normal"),
                p + "self_attn.o_proj.weight": ((h, cfg.num_attention_heads * d), "normal"),
                p + "mlp.gate_proj.weight": ((inter, h), "normal"),
                p + "mlp.up_proj.weight": ((inter, h), "normal"),
                p + "mlp.down_proj.weight": ((h, inter), "normal"),
            })
        return spec

    def max_context(self, cfg: MistralConfig) -> int:
        return cfg.max_position_embeddings

    def cache_bytes_per_token(self, cfg: MistralConfig, dtype: torch.dtype) -> int:
        per_layer = 2 * cfg.num_key_value_heads * cfg.head_dim * torch.empty(0, dtype=dtype).element_size()
        return per_layer * cfg.num_hidden_layers

    def describe(self, cfg: MistralConfig) -> list[tuple[str, str]]:
        return [
            ("layers", f"{cfg.num_hidden_layers} x (GQA attention {cfg.num_attention_heads}/{cfg.num_key_value_heads} "
                       f"heads of {cfg.head_dim}, SwiGLU {cfg.intermediate_size})"),
            ("hidden / vocab", f"{cfg.hidden_size} / {cfg.vocab_size}"),
            ("rope", f"default, theta {cfg.rope_theta:g}"),
            ("sliding window", str(cfg.sliding_window) if cfg.sliding_window else "none"),
            ("max context", str(cfg.max_position_embeddings)),
        ]
