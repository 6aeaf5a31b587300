"""Tiny random Gemma-4 checkpoints written by transformers' own classes and save_pretrained.

Layouts:
- "gemma4": Gemma4ForConditionalGeneration, the published layout (``model.language_model.*``, a
  vision tower and ``embed_vision`` that imp must skip, no lm_head because it is tied);
- "gemma4_text": Gemma4ForCausalLM (``model.layers.*``).

The tiny config is one transformers 5.24 instantiates as a text model alone: 6 layers (sliding, sliding, global, sliding,
sliding, global), 4 heads, sliding kv 2 x 16, global kv 1 x 32 with K=V and proportional RoPE
(4 of 16 pairs rotate), 8 experts top-2, window 8, softcap 30, no PLE. Every weight that
initialises to 1 (norms, layer_scalar, router.scale, per_expert_scale) is randomised so a wrong
formula cannot pass unnoticed, and the embedding is widened so the logits reach the softcap's
non-linear range.

``write_synthetic_checkpoint`` is the fallback for machines whose transformers lacks Gemma-4: the
same tensors from the family's synthetic spec, saved with safetensors in the published layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from imp_core.testing.tiny_tokenizer import write_tiny_tokenizer

SLIDING, FULL = "sliding_attention", "full_attention"
TEXT = dict(
    vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=6, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, global_head_dim=32, num_global_key_value_heads=1, attention_k_eq_v=True,
    enable_moe_block=True, num_experts=8, top_k_experts=2, moe_intermediate_size=24, sliding_window=8,
    final_logit_softcapping=30.0, hidden_size_per_layer_input=0, vocab_size_per_layer_input=512,
    layer_types=[SLIDING, SLIDING, FULL, SLIDING, SLIDING, FULL], max_position_embeddings=512,
    rms_norm_eps=1e-6, pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True,
    rope_parameters={SLIDING: {"rope_type": "default", "rope_theta": 10000.0},
                     FULL: {"rope_type": "proportional", "rope_theta": 1e6, "partial_rotary_factor": 0.25}},
)
EMBED_STD = 0.1  # the layers, not the token's own embedding, dominate the residual stream
QK_NORM = (0.3, 0.8)  # q.k logits (scale 1.0) of a few units: attention not so sharp that fp32 noise explodes
FINAL_NORM = (5.0, 15.0)  # a wide final norm (real Gemma's has outliers in the hundreds): logits ~ +-20


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Randomise every tensor that initialises to 1, and widen the embedding."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if "vision" in name:
                continue
            if name.endswith("language_model.norm.weight") or name == "model.norm.weight":
                t.copy_(torch.empty(t.shape).uniform_(*FINAL_NORM, generator=g))
            elif name.endswith(("q_norm.weight", "k_norm.weight")):
                t.copy_(torch.empty(t.shape).uniform_(*QK_NORM, generator=g))
            elif name.endswith(("norm.weight", "layernorm.weight", "layernorm_1.weight", "layernorm_2.weight",
                              "router.scale", "router.per_expert_scale", "layer_scalar")):
                t.copy_(torch.empty(t.shape).uniform_(0.5, 1.5, generator=g))
            elif name.endswith(("embed_tokens.weight", "lm_head.weight")):
                t.copy_(torch.randn(t.shape, generator=g) * EMBED_STD)


def text_config(**overrides):
    import transformers as tf

    return tf.Gemma4TextConfig(**{**TEXT, **overrides})


def build_hf_model(layout: str = "gemma4", *, seed: int = 0, **text_overrides):
    import transformers as tf

    torch.manual_seed(seed)
    text = text_config(**text_overrides)
    if layout == "gemma4":
        vision = tf.Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=2, head_dim=16)
        cfg = tf.Gemma4Config(text_config=text, vision_config=vision, audio_config=None,
                              tie_word_embeddings=text.tie_word_embeddings)
        model = tf.Gemma4ForConditionalGeneration._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    elif layout == "gemma4_text":
        model = tf.Gemma4ForCausalLM._from_config(text, attn_implementation="eager", dtype=torch.float32)
    else:
        raise ValueError(layout)
    _randomize(model, seed + 1)
    return model.eval()


def write_checkpoint(dest: Path, layout: str = "gemma4", *, seed: int = 0, dtype=torch.float32,
                     **text_overrides) -> Path:
    """Save a tiny random model in ``layout`` plus a tiny Gemma-style tokenizer with a chat template."""
    model = build_hf_model(layout, seed=seed, **text_overrides)
    model.to(dtype).save_pretrained(dest)
    write_tiny_tokenizer(dest, style="gemma")
    return Path(dest)


def load_hf(dest: Path, layout: str = "gemma4"):
    """transformers' model loaded back from ``dest`` (fp32, eager attention): the parity oracle.

    The multimodal class is used for the published layout: Gemma4ForCausalLM.from_pretrained of
    that directory would not load the decoder weights (transformers 5.24 does not map the
    ``model.language_model.`` prefix there: every decoder weight is reported missing).
    """
    import transformers as tf

    cls = tf.Gemma4ForConditionalGeneration if layout == "gemma4" else tf.Gemma4ForCausalLM
    return cls.from_pretrained(dest, attn_implementation="eager", dtype=torch.float32).eval()


def write_synthetic_checkpoint(dest: Path, *, seed: int = 0, **text_overrides) -> Path:
    """The same tiny model without transformers: random tensors from the synthetic spec, published names."""
    from safetensors.torch import save_file

    from imp_gemma4.family import Gemma4Family

    family = Gemma4Family()
    text = {**TEXT, **text_overrides}
    cfg = family.config_from_dict(text)
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (shape, init) in family.synthetic_spec(cfg).items():
        if name == "model.norm.weight":
            t = torch.empty(shape).uniform_(*FINAL_NORM, generator=g)
        elif name.endswith(("q_norm.weight", "k_norm.weight")):
            t = torch.empty(shape).uniform_(*QK_NORM, generator=g)
        elif init == "ones":
            t = torch.empty(shape).uniform_(0.5, 1.5, generator=g)
        elif name.endswith(("embed_tokens.weight", "lm_head.weight")):
            t = torch.randn(shape, generator=g) * EMBED_STD
        else:
            t = torch.randn(shape, generator=g) * 0.02
        tensors[name.replace("model.", "model.language_model.", 1)] = t.contiguous()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    text_cfg = {**text, "model_type": "gemma4_text", "dtype": "float32"}
    config = {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4",
              "text_config": text_cfg, "vision_config": None, "audio_config": None,
              "tie_word_embeddings": text["tie_word_embeddings"], "dtype": "float32"}
    (dest / "config.json").write_text(json.dumps(config, indent=1))
    write_tiny_tokenizer(dest, style="gemma")
    return dest
