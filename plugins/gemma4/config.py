"""The Gemma-4 family's config, parsed from config.json (text_config of the multimodal wrapper).

Gemma-4 is heterogeneous: sliding and global ("full") layers have different head dims, kv-head
counts, RoPE and (with ``attention_k_eq_v``) no v_proj. There is no global head_dim; every
reader uses the per-layer view ``Gemma4Config.layers``. Two spellings of the per-layer facts
exist and both are read:

- the published config.json: ``global_head_dim`` and ``num_global_key_value_heads`` (the latter
  applies only when ``attention_k_eq_v`` is true, as in transformers);
- configs saved by transformers >= 5.2x: a sparse ``per_layer_config`` {"05": {"head_dim": 512,
  "num_key_value_heads": 2}, ...}; when present it wins, as in transformers.

Anything this plugin does not implement (per-layer embeddings, KV sharing, bidirectional text
attention, attention biases, other RoPE types) is refused with one clear line.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from imp_core.checkpoint.base import Checkpoint
from imp_core.errors import CheckpointError
from imp_core.model.family import parse_config
from imp_core.layers.rope import default_inv_freq, proportional_inv_freq

SLIDING, FULL = "sliding_attention", "full_attention"
LAYER_KINDS = {SLIDING: "sliding", FULL: "full"}
DEFAULT_ROPE = {  # transformers' Gemma4TextConfig defaults
    SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
    FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
}
PER_LAYER_KEYS = ("head_dim", "num_key_value_heads")


class RopeConfig(BaseModel):
    """RoPE of one layer type: ``default`` (all dims) or ``proportional`` (partial, over the full head)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    rope_type: str = "default"
    rope_theta: float = Field(gt=0)
    partial_rotary_factor: float = Field(1.0, gt=0, le=1)
    factor: float = Field(1.0, gt=0)

    def inv_freq(self, head_dim: int) -> torch.Tensor:
        """fp32 inverse frequencies, head_dim/2 of them (zeros where dims do not rotate)."""
        if self.rope_type == "default":  # transformers' Gemma-4 default rope ignores partial/factor
            return default_inv_freq(self.rope_theta, head_dim)
        pairs = int(self.partial_rotary_factor * head_dim // 2)
        return proportional_inv_freq(self.rope_theta, head_dim, pairs) / self.factor

    def describe(self, head_dim: int) -> str:
        if self.rope_type == "default":
            return f"default, theta {self.rope_theta:g}, all {head_dim} dims"
        pairs = int(self.partial_rotary_factor * head_dim // 2)
        half = head_dim // 2
        return (f"proportional, theta {self.rope_theta:g}, dims [0,{pairs}) and [{half},{half + pairs}) "
                f"of {head_dim} rotate (exponent 2i/{head_dim})")


class Gemma4LayerConfig(BaseModel):
    """What one decoder layer needs: the per-layer view of the config."""

    model_config = ConfigDict(frozen=True)

    index: int
    layer_type: str  # "sliding_attention" or "full_attention"
    head_dim: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    k_eq_v: bool  # V is the raw k_proj output (no v_proj)
    sliding_window: int | None

    @property
    def kind(self) -> str:
        """"sliding" or "full" (imp's AttentionLayerSpec vocabulary)."""
        return LAYER_KINDS[self.layer_type]


class Gemma4Config(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    architecture: str = "Gemma4ForConditionalGeneration"
    vocab_size: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    num_hidden_layers: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    rms_norm_eps: float = 1e-6
    hidden_activation: str = "gelu_pytorch_tanh"
    max_position_embeddings: int = 131072
    sliding_window: int = Field(gt=0)
    final_logit_softcapping: float | None = None
    attention_k_eq_v: bool = False
    enable_moe_block: bool = False
    num_experts: int = 0
    top_k_experts: int = 0
    moe_intermediate_size: int = 0
    tie_word_embeddings: bool = True
    rope: dict[str, RopeConfig]
    layers: tuple[Gemma4LayerConfig, ...]
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _per_layer_view(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "layers" in data:
            return data
        d = dict(data)
        _refuse_unsupported(d)
        d["rope"] = _rope_parameters(d)
        d["layers"] = _layer_view(d)
        return d

    @model_validator(mode="after")
    def _check(self) -> "Gemma4Config":
        if len(self.layers) != self.num_hidden_layers:
            raise ValueError(f"layer_types has {len(self.layers)} entries for {self.num_hidden_layers} layers")
        for layer in self.layers:
            if self.num_attention_heads % layer.num_kv_heads:
                raise ValueError(f"layer {layer.index}: num_attention_heads {self.num_attention_heads} is not a "
                                 f"multiple of its {layer.num_kv_heads} kv heads")
        if self.enable_moe_block and not (self.num_experts > 0 and 0 < self.top_k_experts <= self.num_experts
                                          and self.moe_intermediate_size > 0):
            raise ValueError("enable_moe_block needs num_experts > 0, 0 < top_k_experts <= num_experts "
                             "and moe_intermediate_size > 0")
        return self

    # -- per-layer helpers --------------------------------------------------------------
    def layer_types_present(self) -> list[str]:
        return [t for t in (SLIDING, FULL) if any(layer.layer_type == t for layer in self.layers)]

    def first_layer(self, layer_type: str) -> Gemma4LayerConfig:
        return next(layer for layer in self.layers if layer.layer_type == layer_type)


def _refuse_unsupported(d: dict[str, Any]) -> None:
    ple = d.get("hidden_size_per_layer_input", 256)  # transformers' default is 256 (PLE on)
    if ple:
        raise CheckpointError(
            f"hidden_size_per_layer_input is {ple}: per-layer embeddings (Gemma-4 E2B/E4B) are "
            f"not implemented by the gemma4 plugin (supported: 0, as in gemma-4-26B-A4B)")
    if d.get("num_kv_shared_layers", 0):
        raise CheckpointError(f"num_kv_shared_layers is {d['num_kv_shared_layers']}: KV sharing "
                              f"across layers is not implemented by the gemma4 plugin (supported: 0)")
    if d.get("use_bidirectional_attention") == "all":
        raise CheckpointError("use_bidirectional_attention is 'all': only causal text "
                              "attention is implemented by the gemma4 plugin (supported: null or 'vision')")
    if d.get("attention_bias"):
        raise CheckpointError("attention_bias is true: the gemma4 plugin expects bias-free "
                              "attention projections")


def _rope_parameters(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    raw = d.get("rope_parameters")
    if raw is None:
        raw = DEFAULT_ROPE
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise CheckpointError("rope_parameters must be a dict keyed by layer type "
                              "(sliding_attention, full_attention)")
    out = {}
    for layer_type, params in raw.items():
        rtype = params.get("rope_type", params.get("type", "default"))
        if rtype not in ("default", "proportional"):
            raise CheckpointError(f"rope_parameters.{layer_type}.rope_type is '{rtype}'; the gemma4 "
                                  f"plugin supports 'default' and 'proportional'")
        theta = params.get("rope_theta", DEFAULT_ROPE.get(layer_type, {}).get("rope_theta", 10_000.0))
        out[layer_type] = {**params, "rope_type": rtype, "rope_theta": theta}
    return out


def _per_layer_overrides(d: dict[str, Any], layer_types: list[str]) -> dict[int, dict[str, Any]]:
    """{layer index: {head_dim, num_key_value_heads}} from either spelling (see module docstring)."""
    raw = d.get("per_layer_config")
    if raw is not None:
        if not isinstance(raw, dict):
            raise CheckpointError("per_layer_config must be a dict {layer index: overrides}")
        out = {}
        for key, overrides in raw.items():
            try:
                idx = int(key)
            except (TypeError, ValueError):
                raise CheckpointError(f"per_layer_config key '{key}' is not a layer index") from None
            unknown = sorted(set(overrides) - set(PER_LAYER_KEYS)) if isinstance(overrides, dict) else ["?"]
            if unknown:
                raise CheckpointError(f"per_layer_config.{key} overrides {unknown}; the gemma4 plugin "
                                      f"supports per-layer {', '.join(PER_LAYER_KEYS)} only")
            out[idx] = dict(overrides)
        return out
    global_overrides: dict[str, Any] = {"head_dim": d.get("global_head_dim", 512)}
    kv = d.get("num_global_key_value_heads")
    if kv is not None and d.get("attention_k_eq_v", False):
        global_overrides["num_key_value_heads"] = kv
    return {i: global_overrides for i, t in enumerate(layer_types) if t == FULL}


def _layer_view(d: dict[str, Any]) -> list[dict[str, Any]]:
    n = d.get("num_hidden_layers")
    if not isinstance(n, int) or n <= 0:
        return []  # pydantic reports the missing/bad num_hidden_layers
    layer_types = d.get("layer_types")
    if layer_types is None:  # transformers' default: 5 sliding then 1 full, last forced full
        layer_types = [SLIDING if (i + 1) % 6 else FULL for i in range(n)]
    layer_types = list(layer_types)
    bad = sorted({t for t in layer_types if t not in LAYER_KINDS})
    if bad:
        raise CheckpointError(f"layer_types contains {bad}; expected sliding_attention / full_attention")
    if layer_types and layer_types[-1] != FULL:  # transformers forces the last layer to full attention
        layer_types[-1] = FULL
    overrides = _per_layer_overrides(d, layer_types)
    missing = sorted({t for t in layer_types} - set(d["rope"]))
    if missing:
        raise CheckpointError(f"rope_parameters has no entry for layer type(s) {missing}")
    head_dim = d.get("head_dim", 256)
    kv_heads = d.get("num_key_value_heads", d.get("num_attention_heads"))
    layers = []
    for i, t in enumerate(layer_types):
        o = overrides.get(i, {})
        layers.append(dict(index=i, layer_type=t, head_dim=o.get("head_dim", head_dim),
                           num_kv_heads=o.get("num_key_value_heads", kv_heads),
                           k_eq_v=bool(d.get("attention_k_eq_v", False)) and t == FULL,
                           sliding_window=d.get("sliding_window") if t == SLIDING else None))
    return layers


def load_config(checkpoint: Checkpoint) -> Gemma4Config:
    """The family config of a checkpoint: text_config plus the wrapper's architecture and tying."""
    data = dict(checkpoint.text_config)
    archs = checkpoint.hf_architectures
    data["architecture"] = archs[0] if archs else "Gemma4ForConditionalGeneration"
    # transformers ties lm_head to the embedding by the top-level config's flag (default true)
    data["tie_word_embeddings"] = checkpoint.config.get("tie_word_embeddings",
                                                        data.get("tie_word_embeddings", True))
    if checkpoint.format == "gguf":
        where = f"{checkpoint.path} (GGUF metadata)"
    else:
        where = f"{checkpoint.path}/config.json" + (" (text_config)" if "text_config" in checkpoint.config else "")
    try:
        return parse_config(Gemma4Config, data, where)
    except CheckpointError as exc:
        if str(exc).startswith(where):
            raise
        raise CheckpointError(f"{where}: {exc}") from None
