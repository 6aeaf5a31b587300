"""Write a tiny random checkpoint in the Mistral-Small-3.2 layout, for the README's demo.

    python -m imp_mistral.demo DIR

The weights are random, so the generated text is noise; the files are the real on-disk layout
(Mistral3ForConditionalGeneration config.json with text_config, legacy
``language_model.model.*`` tensor names, a tokenizer.json with a chat template), so `imp run`
exercises exactly the code a real checkpoint does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from imp_core.testing.tiny_tokenizer import write_tiny_tokenizer

TEXT = {"model_type": "mistral", "vocab_size": 512, "hidden_size": 128, "intermediate_size": 384,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
        "rms_norm_eps": 1e-5, "max_position_embeddings": 2048, "sliding_window": None,
        "hidden_act": "silu", "rope_parameters": {"rope_type": "default", "rope_theta": 1e9},
        "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False}


def write_demo_checkpoint(dest: Path, *, seed: int = 0) -> Path:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    t = TEXT
    h, d, inter = t["hidden_size"], t["head_dim"], t["intermediate_size"]
    nq, nkv = t["num_attention_heads"] * d, t["num_key_value_heads"] * d

    def rnd(*shape, std=0.05):
        return (torch.randn(*shape, generator=g) * std).to(torch.bfloat16)

    def norm(n):
        return (1.0 + 0.1 * torch.randn(n, generator=g)).to(torch.bfloat16)

    tensors = {"language_model.model.embed_tokens.weight": rnd(t["vocab_size"], h, std=1.0),
               "language_model.model.norm.weight": norm(h),
               "language_model.lm_head.weight": rnd(t["vocab_size"], h)}
    for i in range(t["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        tensors.update({
            p + "input_layernorm.weight": norm(h), p + "post_attention_layernorm.weight": norm(h),
            p + "self_attn.q_proj.weight": rnd(nq, h), p + "self_attn.k_proj.weight": rnd(nkv, h),
            p + "self_attn.v_proj.weight": rnd(nkv, h), p + "self_attn.o_proj.weight": rnd(h, nq),
            p + "mlp.gate_proj.weight": rnd(inter, h), p + "mlp.up_proj.weight": rnd(inter, h),
            p + "mlp.down_proj.weight": rnd(h, inter),
        })
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    config = {"architectures": ["Mistral3ForConditionalGeneration"], "model_type": "mistral3",
              "text_config": TEXT, "image_token_index": 10, "dtype": "bfloat16",
              "tie_word_embeddings": False, "imp_demo": "random weights: the text is noise"}
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (dest / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}) + "\n")
    write_tiny_tokenizer(dest, style="mistral")
    return dest


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m imp_mistral.demo DIR", file=sys.stderr)
        return 2
    path = write_demo_checkpoint(Path(argv[0]))
    print(f"wrote a tiny random Mistral-layout checkpoint to {path} (its text is noise)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
