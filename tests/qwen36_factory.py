"""Tiny random Qwen3.5/3.6 checkpoints written by transformers' own classes and save_pretrained.

Layouts (the published BF16 names, and what transformers 5.24's save_pretrained writes):
- "fused": Qwen3_5MoeForConditionalGeneration saved with ``save_original_format=False``: the
  published BF16 names (``model.language_model.*``, fused 3-D ``mlp.experts.gate_up_proj`` /
  ``down_proj``) plus a tiny ``model.visual.*`` tower imp must skip;
- "per_expert": the same model saved the default way: per-expert 2-D
  ``mlp.experts.{e}.{gate,up,down}_proj.weight`` (the layout of quantized exports), plus a few
  ``mtp.*`` tensors appended by hand (the published checkpoints carry an MTP head);
- "dense": Qwen3_5ForCausalLM, the dense sibling (plain ``model.layers.*``, SwiGLU MLP).

Every weight that initialises to a constant (the (1+w) norms at 0, the gated norm at 1, dt_bias
at 1) is randomised, and A_log is redrawn, so a wrong formula cannot hide behind init values.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.tiny_tokenizer import write_tiny_tokenizer

VOCAB = 512
CHUNK = 64  # the DeltaNet chunk size; prompts longer than this cross a chunk boundary

TEXT = dict(
    vocab_size=VOCAB, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
    head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
    linear_value_head_dim=16, linear_conv_kernel_dim=4, rms_norm_eps=1e-6, max_position_embeddings=1024,
    rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                     "mrope_section": [2, 1, 1], "mrope_interleaved": True},
    bos_token_id=0, eos_token_id=2, tie_word_embeddings=False, initializer_range=0.1,
)
MOE = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48)
DENSE = dict(intermediate_size=96)
LAYOUTS = ("fused", "per_expert", "dense")


def _randomize(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".visual." in name or name.startswith("visual."):
                continue
            short = name.rsplit(".", 1)[-1]
            if name.endswith("linear_attn.norm.weight"):  # plain weight, init 1
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif "norm" in name and p.dim() == 1:  # zero-centred (1+w) norms, init 0
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif short == "dt_bias":
                p.copy_(torch.randn(p.shape, generator=g))
            elif short == "A_log":
                p.copy_(torch.empty(p.shape).uniform_(-1.5, 1.5, generator=g))
            elif name.endswith("conv1d.weight"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif name.endswith("in_proj_qkv.weight"):
                # larger q|k|v keep the DeltaNet output well above the gated norm's eps, where
                # the norm would amplify fp32 rounding (a tiny model's outputs are otherwise ~1e-2)
                p.copy_(0.4 * torch.randn(p.shape, generator=g))


def build_hf_model(layout: str = "fused", *, seed: int = 0, **text_overrides):
    """transformers' model with random weights (fp32, eager attention and experts)."""
    import transformers as tf

    torch.manual_seed(seed)
    if layout == "dense":
        cfg = tf.Qwen3_5TextConfig(**{**TEXT, **DENSE, **text_overrides})
        model = tf.Qwen3_5ForCausalLM._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    elif layout in ("fused", "per_expert"):
        text = tf.Qwen3_5MoeTextConfig(**{**TEXT, **MOE, **text_overrides})
        vision = tf.Qwen3_5MoeVisionConfig(depth=1, hidden_size=32, intermediate_size=64, num_heads=2,
                                            out_hidden_size=TEXT["hidden_size"], patch_size=8,
                                            num_position_embeddings=16)
        cfg = tf.Qwen3_5MoeConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                  tie_word_embeddings=False)
        model = tf.Qwen3_5MoeForConditionalGeneration._from_config(
            cfg, attn_implementation="eager", experts_implementation="eager", dtype=torch.float32)
    else:
        raise ValueError(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
    _randomize(model, seed + 1)
    return model.eval()


def _append_mtp(dest: Path) -> None:
    """Add an MTP head's tensors (per-expert names, as published) to the single safetensors file."""
    from safetensors.torch import load_file, save_file

    path = dest / "model.safetensors"
    tensors = load_file(path)
    h = TEXT["hidden_size"]
    tensors["mtp.fc.weight"] = torch.randn(h, 2 * h)
    tensors["mtp.layers.0.mlp.experts.0.gate_proj.weight"] = torch.randn(MOE["moe_intermediate_size"], h)
    tensors["mtp.norm.weight"] = torch.randn(h)
    save_file(tensors, path, metadata={"format": "pt"})


def write_checkpoint(dest: Path, layout: str = "fused", *, seed: int = 0, dtype=torch.float32,
                     **text_overrides) -> Path:
    """Save a tiny random model in ``layout`` plus a tiny ChatML tokenizer."""
    dest = Path(dest)
    model = build_hf_model(layout, seed=seed, **text_overrides).to(dtype)
    if layout == "fused":
        model.save_pretrained(dest, save_original_format=False)
    else:
        model.save_pretrained(dest)
    if layout == "per_expert":
        _append_mtp(dest)
    write_tiny_tokenizer(dest, style="chatml")
    return dest


def stored_names(dest: Path) -> list[str]:
    from safetensors import safe_open

    files = sorted(Path(dest).glob("*.safetensors"))
    out = []
    for f in files:
        with safe_open(f, "pt") as fh:
            out += list(fh.keys())
    return out


def load_hf(dest: Path, layout: str = "fused"):
    """transformers' model loaded back from ``dest`` (fp32, eager): the parity oracle."""
    import transformers as tf

    cls = tf.Qwen3_5ForCausalLM if layout == "dense" else tf.Qwen3_5MoeForConditionalGeneration
    kw = {} if layout == "dense" else {"experts_implementation": "eager"}
    return cls.from_pretrained(dest, attn_implementation="eager", dtype=torch.float32, **kw).eval()


def config_json(dest: Path) -> dict:
    return json.loads((Path(dest) / "config.json").read_text())
