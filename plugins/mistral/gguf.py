"""Mistral/Llama GGUF files: the family config from ``llama.*`` / ``mistral3.*`` metadata, and
the converter transforms to undo (docs/formats.md, "Converter transforms imp undoes").

llama.cpp's ``LlamaModel`` (used for both arches) permutes the rows of ``q_proj`` and
``k_proj`` from HF's rotate-half layout to interleaved pairs; ``llama_unpermute`` puts them
back (on the packed rows, for block types). A file without ``output.weight`` has a tied head:
the model then uses the embedding, as it does for HF checkpoints without ``lm_head.weight``.
"""

from __future__ import annotations

from typing import Any

from imp_core.checkpoint.gguf_names import llama_unpermute, metadata_value
from imp_core.errors import CheckpointError

ARCH_LABEL = {"llama": "LlamaForCausalLM (GGUF llama)", "mistral3": "Mistral3ForConditionalGeneration (GGUF mistral3)"}


def config_from_gguf(metadata: dict[str, Any], tensors: dict[str, Any], *, where: str) -> dict[str, Any]:
    """A config.json-like dict for ``MistralConfig`` from the GGUF metadata."""
    arch = metadata["general.architecture"]

    def key(k: str, default: Any = ...) -> Any:
        return metadata_value(metadata, f"{arch}.{k}", where, default)

    heads = int(key("attention.head_count"))
    hidden = int(key("embedding_length"))
    head_dim = int(key("attention.key_length", hidden // heads))
    rope_dims = key("rope.dimension_count", head_dim)
    if int(rope_dims) != head_dim:
        raise CheckpointError(f"{where}: {arch}.rope.dimension_count is {rope_dims}, but the mistral "
                              f"family rotates the whole head ({head_dim})")
    scaling = key("rope.scaling.type", None)
    if scaling not in (None, "none"):
        raise CheckpointError(f"{where}: {arch}.rope.scaling.type '{scaling}' is not supported by the "
                              f"mistral plugin (expected none)")
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab = key("vocab_size", len(tokens) if tokens else None)
    if vocab is None and "token_embd.weight" in tensors:
        vocab = tensors["token_embd.weight"].shape[0]
    cfg = {
        "architecture": ARCH_LABEL.get(arch, arch),
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(key("attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(key("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(key("context_length", 4096)),
        "sliding_window": key("attention.sliding_window", None),
        "bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": metadata.get("tokenizer.ggml.eos_token_id"),
        "tie_word_embeddings": "output.weight" not in tensors,
    }
    return cfg


def gguf_transforms(cfg: Any) -> dict[str, Any]:
    """Q/K row permutation undone per layer (both arches are written by LlamaModel)."""
    return {"self_attn.q_proj.weight": llama_unpermute(cfg.num_attention_heads),
            "self_attn.k_proj.weight": llama_unpermute(cfg.num_key_value_heads)}
