"""The Mistral family's config, parsed from config.json (text_config of a Mistral3 wrapper)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from imp_core.checkpoint.base import Checkpoint
from imp_core.errors import CheckpointError
from imp_core.model.family import parse_config


class MistralConfig(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    architecture: str = "MistralForCausalLM"
    vocab_size: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    num_hidden_layers: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_key_value_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 32768
    sliding_window: int | None = None
    hidden_act: str = "silu"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        d = dict(data)
        d.setdefault("num_key_value_heads", d.get("num_attention_heads"))
        if d.get("head_dim") is None and d.get("hidden_size") and d.get("num_attention_heads"):
            d["head_dim"] = d["hidden_size"] // d["num_attention_heads"]
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if isinstance(rope, dict):
            rtype = rope.get("rope_type", rope.get("type", "default"))
            if rtype not in (None, "default"):
                raise CheckpointError(f"config.json: rope_type '{rtype}' is not supported by the "
                                      f"mistral plugin (expected 'default')")
            if "rope_theta" in rope:
                d["rope_theta"] = rope["rope_theta"]
        return d

    @model_validator(mode="after")
    def _check(self) -> "MistralConfig":
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        return self


def load_config(checkpoint: Checkpoint) -> MistralConfig:
    data = dict(checkpoint.text_config)
    archs = checkpoint.hf_architectures
    data["architecture"] = archs[0] if archs else data.get("architecture", "MistralForCausalLM")
    return parse_config(MistralConfig, data, f"{checkpoint.path}/config.json")
