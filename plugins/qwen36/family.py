"""The Qwen3.5/3.6 family object (Gated DeltaNet + gated attention, MoE or dense FFN)."""

from __future__ import annotations

from typing import Any

import torch

from imp_core.checkpoint.base import Checkpoint
from imp_core.model.family import Family
from imp_core.plugin.plan_types import AttentionLayerSpec, ModelInfo
from imp_core.units import DTYPES, human_bytes
from imp_qwen36.config import FULL, Qwen36Config, config_from_dict, load_config
from imp_qwen36.deltanet import state_bytes_per_sequence



def layer_pattern(layer_types: tuple[str, ...]) -> str:
    """'L L L F x10' for a repeating pattern (L = DeltaNet, F = full attention), else the list."""
    letters = ["F" if t == FULL else "L" for t in layer_types]
    n = len(letters)
    for period in range(1, n):
        if n % period == 0 and letters == letters[:period] * (n // period):
            return f"{' '.join(letters[:period])} x{n // period}"
    return " ".join(letters)




def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


class Qwen36Family(Family):
    name = "qwen36"
    transformers_classes = ("Qwen3_5MoeTextConfig", "Qwen3_5MoeForCausalLM")
    skip_prefixes = ("mtp.",)  # the multi-token-prediction head (transformers ignores it too)

    def parse_config(self, checkpoint: Checkpoint) -> Qwen36Config:
        return load_config(checkpoint)

    def config_from_dict(self, data: dict[str, Any]) -> Qwen36Config:
        return config_from_dict(data)

    def model_info(self, cfg: Qwen36Config, checkpoint: Checkpoint | None = None) -> ModelInfo:
        d = cfg.head_dim
        layers = tuple(
            AttentionLayerSpec(index=i, kind="full", num_heads=cfg.num_attention_heads,
                               num_kv_heads=cfg.num_key_value_heads, head_dim=d, scale=d ** -0.5,
                               output_gate=True)
            for i in cfg.full_layers)
        kinds = tuple("attention" if t == FULL else "linear_attention" for t in cfg.layer_types)
        return ModelInfo(family=self.name, architecture=cfg.architecture, num_layers=cfg.num_hidden_layers,
                         hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size, layer_kinds=kinds,
                         attention_layers=layers, is_moe=cfg.moe, num_experts=cfg.num_experts,
                         experts_per_token=cfg.num_experts_per_tok,
                         extra={"rotary_dim": cfg.rotary_dim, "linear_conv_kernel_dim": cfg.linear_conv_kernel_dim,
                                "linear_key_head_dim": cfg.linear_key_head_dim,
                                "linear_value_head_dim": cfg.linear_value_head_dim})

    # -- GGUF (qwen35moe / qwen35; imp_core.checkpoint.gguf_names) -------------------------------
    def gguf_names(self):
        from imp_qwen36.names import GGUF_NAMES

        return GGUF_NAMES

    def config_from_gguf(self, metadata: dict, tensors: dict, *, where: str) -> dict:
        from imp_qwen36.gguf import config_from_gguf

        return config_from_gguf(metadata, tensors, where=where)

    def gguf_transforms(self, cfg: Qwen36Config, metadata: dict) -> dict:
        from imp_qwen36.gguf import gguf_transforms

        return gguf_transforms(cfg)

    def rename(self, cfg: Qwen36Config, checkpoint: Checkpoint):
        if checkpoint.format != "gguf":
            return None
        from imp_qwen36.gguf import mtp_rename

        return mtp_rename(cfg.num_hidden_layers)

    has_fast_decode = True

    def presets(self):
        from imp_qwen36.presets import PRESETS

        return PRESETS

    def format_mixes(self):
        from imp_qwen36.presets import FORMAT_MIXES

        return FORMAT_MIXES

    def fast_model(self, model):
        from imp_qwen36.decode import Qwen36Fast

        return Qwen36Fast(model)

    def build(self, cfg: Qwen36Config, weights: Any):
        from imp_qwen36.model import Qwen36Model

        return Qwen36Model(cfg, weights, self.model_info(cfg, getattr(weights, "checkpoint", None)))

    def max_context(self, cfg: Qwen36Config) -> int:
        return cfg.max_position_embeddings

    def cache_bytes_per_token(self, cfg: Qwen36Config, dtype: torch.dtype) -> int:
        """KV of the full-attention layers only; the DeltaNet state is per sequence (describe)."""
        size = torch.empty(0, dtype=dtype).element_size()
        return 2 * cfg.num_key_value_heads * cfg.head_dim * size * len(cfg.full_layers)

    def cache_bytes(self, cfg: Qwen36Config, dtype: torch.dtype, context: int) -> int:
        return self.cache_bytes_per_token(cfg, dtype) * context + self.state_bytes_per_sequence(cfg, dtype)

    def state_bytes_per_sequence(self, cfg: Qwen36Config, dtype: torch.dtype) -> int:
        """Fixed DeltaNet bytes per sequence: conv state (act dtype) + recurrent state (fp32)."""
        return state_bytes_per_sequence(cfg, dtype)

    def describe(self, cfg: Qwen36Config) -> list[tuple[str, str]]:
        dtype = DTYPES.get(str(cfg.dtype), torch.bfloat16)
        dname = str(dtype).replace("torch.", "")
        n_full, n_lin = len(cfg.full_layers), len(cfg.linear_layers)
        rows = [
            ("layers", f"{cfg.num_hidden_layers}: {layer_pattern(cfg.layer_types)} "
                       f"(L = Gated DeltaNet, F = gated full attention)"),
            ("full attention", f"{cfg.num_attention_heads}/{cfg.num_key_value_heads} heads of {cfg.head_dim}, "
                               f"output gate, RoPE on {cfg.rotary_dim} dims, theta {cfg.rope_theta:g}"),
            ("Gated DeltaNet", f"{cfg.linear_num_key_heads} key / {cfg.linear_num_value_heads} value heads of "
                               f"{cfg.linear_key_head_dim}/{cfg.linear_value_head_dim}, "
                               f"conv kernel {cfg.linear_conv_kernel_dim}"),
        ]
        if cfg.moe:
            rows.append(("experts", f"{cfg.num_experts} routed, top-{cfg.num_experts_per_tok}, + shared "
                                    f"(expert {cfg.moe_intermediate_size}, shared "
                                    f"{cfg.shared_expert_intermediate_size})"))
        else:
            rows.append(("mlp", f"dense SwiGLU {cfg.intermediate_size}"))
        rows += [
            ("hidden / vocab", f"{cfg.hidden_size} / {cfg.vocab_size}"),
            ("cache per token", f"{human_bytes(self.cache_bytes_per_token(cfg, dtype))} "
                                f"(K/V of {_count(n_full, 'full-attention layer')}, {dname})"),
            ("cache per sequence", f"{human_bytes(self.state_bytes_per_sequence(cfg, dtype))} "
                                   f"(conv {dname} + recurrent fp32 state of {_count(n_lin, 'DeltaNet layer')})"),
            ("max context", str(cfg.max_position_embeddings)),
        ]
        return rows

    def synthetic_spec(self, cfg: Qwen36Config) -> dict[str, tuple[tuple[int, ...], str]]:
        h, v = cfg.hidden_size, cfg.vocab_size
        spec: dict[str, tuple[tuple[int, ...], str]] = {
            "model.embed_tokens.weight": ((v, h), "normal"),
            "model.norm.weight": ((h,), "zeros"),
            "lm_head.weight": ((v, h), "normal"),
        }
        for i, kind in enumerate(cfg.layer_types):
            p = f"model.layers.{i}."
            spec[p + "input_layernorm.weight"] = ((h,), "zeros")
            spec[p + "post_attention_layernorm.weight"] = ((h,), "zeros")
            spec.update(self._mixer_spec(cfg, p, kind))
            spec.update(self._mlp_spec(cfg, p + "mlp."))
        return spec

    @staticmethod
    def _mixer_spec(cfg: Qwen36Config, p: str, kind: str) -> dict:
        h = cfg.hidden_size
        if kind == FULL:
            d, nh, nkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
            a = p + "self_attn."
            return {a + "q_proj.weight": ((2 * nh * d, h), "normal"), a + "k_proj.weight": ((nkv * d, h), "normal"),
                    a + "v_proj.weight": ((nkv * d, h), "normal"), a + "o_proj.weight": ((h, nh * d), "normal"),
                    a + "q_norm.weight": ((d,), "zeros"), a + "k_norm.weight": ((d,), "zeros")}
        a, hv = p + "linear_attn.", cfg.linear_num_value_heads
        return {a + "in_proj_qkv.weight": ((cfg.conv_dim, h), "normal"),
                a + "in_proj_z.weight": ((cfg.linear_value_dim, h), "normal"),
                a + "in_proj_b.weight": ((hv, h), "normal"), a + "in_proj_a.weight": ((hv, h), "normal"),
                a + "conv1d.weight": ((cfg.conv_dim, 1, cfg.linear_conv_kernel_dim), "normal:0.2"),
                a + "dt_bias": ((hv,), "ones"), a + "A_log": ((hv,), "uniform:-1,1"),
                a + "norm.weight": ((cfg.linear_value_head_dim,), "ones"),
                a + "out_proj.weight": ((h, cfg.linear_value_dim), "normal")}

    @staticmethod
    def _mlp_spec(cfg: Qwen36Config, m: str) -> dict:
        h = cfg.hidden_size
        if not cfg.moe:
            i = cfg.intermediate_size
            return {m + "gate_proj.weight": ((i, h), "normal"), m + "up_proj.weight": ((i, h), "normal"),
                    m + "down_proj.weight": ((h, i), "normal")}
        e, i, s = cfg.num_experts, cfg.moe_intermediate_size, cfg.shared_expert_intermediate_size
        return {m + "gate.weight": ((e, h), "normal"),
                m + "experts.gate_up_proj": ((e, 2 * i, h), "normal"),
                m + "experts.down_proj": ((e, h, i), "normal"),
                m + "shared_expert.gate_proj.weight": ((s, h), "normal"),
                m + "shared_expert.up_proj.weight": ((s, h), "normal"),
                m + "shared_expert.down_proj.weight": ((h, s), "normal"),
                m + "shared_expert_gate.weight": ((1, h), "normal")}
