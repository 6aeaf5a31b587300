"""Tiny random Mistral checkpoints written by transformers' own classes and save_pretrained.

Two published layouts:
- "mistral3": Mistral3ForConditionalGeneration (the Mistral-Small-3.2 layout: legacy
  ``language_model.model.*`` names, a vision tower and projector that imp must skip, untied head);
- "mistral": MistralForCausalLM (the older plain ``model.layers.*`` layout).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.tiny_tokenizer import write_tiny_tokenizer

TEXT = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
            max_position_embeddings=512, sliding_window=None, bos_token_id=1, eos_token_id=2,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6}, tie_word_embeddings=False)


def _randomize_norms(model: torch.nn.Module, seed: int) -> None:
    """Norm weights init to 1; randomise them so a wrong norm formula cannot pass unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and p.dim() == 1:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))


def build_hf_model(layout: str = "mistral3", *, seed: int = 0, **text_overrides):
    import transformers as tf

    torch.manual_seed(seed)
    text = tf.MistralConfig(**{**TEXT, **text_overrides})
    if layout == "mistral3":
        vision = tf.PixtralVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, head_dim=16, image_size=32, patch_size=16)
        cfg = tf.Mistral3Config(text_config=text, vision_config=vision, image_token_index=10,
                                tie_word_embeddings=False)
        model = tf.Mistral3ForConditionalGeneration._from_config(cfg, attn_implementation="eager",
                                                                  torch_dtype=torch.float32)
    elif layout == "mistral":
        model = tf.MistralForCausalLM._from_config(text, attn_implementation="eager", torch_dtype=torch.float32)
    else:
        raise ValueError(layout)
    _randomize_norms(model, seed + 1)
    return model.eval()


def write_checkpoint(dest: Path, layout: str = "mistral3", *, seed: int = 0, dtype=torch.float32,
                     **text_overrides) -> Path:
    """Save a tiny random model in ``layout`` plus a tiny BPE tokenizer with a chat template."""
    model = build_hf_model(layout, seed=seed, **text_overrides)
    model.to(dtype).save_pretrained(dest)
    write_tiny_tokenizer(dest, style="mistral")
    return dest


def load_hf(dest: Path, layout: str = "mistral3"):
    """transformers' model loaded back from ``dest`` (fp32, eager attention): the parity oracle."""
    import transformers as tf

    cls = tf.Mistral3ForConditionalGeneration if layout == "mistral3" else tf.MistralForCausalLM
    return cls.from_pretrained(dest, attn_implementation="eager", dtype=torch.float32).eval()
