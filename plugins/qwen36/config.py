"""The Qwen3.5/3.6 family's config, parsed from config.json (text_config of the multimodal wrapper).

Accepts the published layout (Qwen/Qwen3.6-35B-A3B's config.json): ``rope_parameters`` with
``partial_rotary_factor`` and the mrope fields (older files: ``rope_scaling`` plus top-level
``rope_theta`` / ``partial_rotary_factor``), ``layer_types`` or ``full_attention_interval``,
the ``linear_*`` Gated DeltaNet fields, and either the MoE fields (``qwen3_5_moe``) or a dense
``intermediate_size`` (``qwen3_5``). Keys transformers ignores (mtp_*, attn_output_gate,
mamba_ssm_dtype) are ignored here too.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from imp_core.checkpoint.base import Checkpoint
from imp_core.errors import CheckpointError
from imp_core.model.family import parse_config

LINEAR, FULL = "linear_attention", "full_attention"
MOE_MODEL_TYPES = ("qwen3_5_moe", "qwen3_5_moe_text")
DENSE_MODEL_TYPES = ("qwen3_5", "qwen3_5_text")


class Qwen36Config(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    architecture: str = "Qwen3_5MoeForCausalLM"
    moe: bool = True
    vocab_size: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_hidden_layers: int = Field(gt=0)
    layer_types: tuple[str, ...]
    # gated full attention
    num_attention_heads: int = Field(16, gt=0)
    num_key_value_heads: int = Field(2, gt=0)
    head_dim: int = Field(256, gt=0)
    attention_bias: bool = False
    rope_theta: float = Field(10000.0, gt=0)
    partial_rotary_factor: float = Field(0.25, gt=0, le=1)
    mrope_section: tuple[int, ...] | None = None
    mrope_interleaved: bool = False
    # Gated DeltaNet
    linear_conv_kernel_dim: int = Field(4, gt=0)
    linear_key_head_dim: int = Field(128, gt=0)
    linear_value_head_dim: int = Field(128, gt=0)
    linear_num_key_heads: int = Field(16, gt=0)
    linear_num_value_heads: int = Field(32, gt=0)
    # feed-forward: MoE (qwen3_5_moe) or dense (qwen3_5)
    num_experts: int = Field(0, ge=0)
    num_experts_per_tok: int = Field(0, ge=0)
    moe_intermediate_size: int = Field(0, ge=0)
    shared_expert_intermediate_size: int = Field(0, ge=0)
    intermediate_size: int = Field(0, ge=0)
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    dtype: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _layout(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        d = dict(data)
        d.setdefault("dtype", d.get("torch_dtype"))
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if not isinstance(rope, dict):
            raise ValueError("rope_parameters must be an object")
        rtype = rope.get("rope_type", rope.get("type", "default"))
        if rtype not in (None, "default", "mrope"):
            raise CheckpointError(f"config.json: rope_type '{rtype}' is not supported by the qwen36 "
                                  f"plugin (expected 'default')")
        for key in ("rope_theta", "partial_rotary_factor", "mrope_section", "mrope_interleaved"):
            if key in rope:
                d[key] = rope[key]
        if d.get("layer_types") is None and isinstance(d.get("num_hidden_layers"), int):
            interval = d.get("full_attention_interval", 4)
            if not isinstance(interval, int) or interval <= 0:
                raise ValueError("full_attention_interval must be a positive integer")
            d["layer_types"] = [FULL if (i + 1) % interval == 0 else LINEAR
                                for i in range(d["num_hidden_layers"])]
        return d

    @model_validator(mode="after")
    def _check(self) -> "Qwen36Config":
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for "
                             f"{self.num_hidden_layers} layers")
        bad = sorted(set(self.layer_types) - {LINEAR, FULL})
        if bad:
            raise ValueError(f"layer_types holds {bad}; expected '{LINEAR}' or '{FULL}'")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.linear_num_value_heads % self.linear_num_key_heads:
            raise ValueError("linear_num_value_heads must be a multiple of linear_num_key_heads")
        if self.rotary_dim % 2 or self.rotary_dim == 0:
            raise ValueError(f"head_dim * partial_rotary_factor = {self.rotary_dim} must be even and > 0")
        if self.moe:
            if not (self.num_experts and self.moe_intermediate_size
                    and 0 < self.num_experts_per_tok <= self.num_experts):
                raise ValueError("a qwen3_5_moe config needs num_experts, num_experts_per_tok "
                                 "(<= num_experts) and moe_intermediate_size")
        elif not self.intermediate_size:
            raise ValueError("a dense qwen3_5 config needs intermediate_size")
        return self

    # -- derived shapes --------------------------------------------------------------------
    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def full_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == FULL]

    @property
    def linear_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == LINEAR]

    @property
    def linear_key_dim(self) -> int:
        return self.linear_num_key_heads * self.linear_key_head_dim

    @property
    def linear_value_dim(self) -> int:
        return self.linear_num_value_heads * self.linear_value_head_dim

    @property
    def conv_dim(self) -> int:
        """Channels of the causal conv: q | k | v of the DeltaNet."""
        return 2 * self.linear_key_dim + self.linear_value_dim


def _is_moe(data: dict[str, Any], model_types: list[str]) -> bool:
    arch = str(data.get("architecture", ""))
    if "Moe" in arch or any(m in MOE_MODEL_TYPES for m in model_types):
        return True
    if arch.startswith("Qwen3_5For") or any(m in DENSE_MODEL_TYPES for m in model_types):
        return False
    return bool(data.get("num_experts"))


def config_from_dict(data: dict[str, Any], source: str = "config dict") -> Qwen36Config:
    """Parse a text_config-like dict (``architecture`` and ``model_type`` keys optional)."""
    d = dict(data)
    d.setdefault("architecture", "Qwen3_5MoeForCausalLM")
    mt = d.get("model_type")
    d.setdefault("moe", _is_moe(d, [mt] if isinstance(mt, str) else []))
    return parse_config(Qwen36Config, d, source)


def load_config(checkpoint: Checkpoint) -> Qwen36Config:
    data = dict(checkpoint.text_config)
    archs = checkpoint.hf_architectures
    data["architecture"] = archs[0] if archs else "Qwen3_5MoeForCausalLM"
    if "dtype" not in data and "torch_dtype" not in data:
        data["dtype"] = checkpoint.config.get("dtype") or checkpoint.config.get("torch_dtype")
    data["moe"] = _is_moe(data, checkpoint.model_types)
    source = f"{checkpoint.path} (GGUF metadata)" if checkpoint.format == "gguf" else f"{checkpoint.path}/config.json"
    return parse_config(Qwen36Config, data, source)
