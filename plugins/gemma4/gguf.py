"""Gemma-4 GGUF files (llama.cpp's ``gemma4``): the config from the metadata, the generated ``rope_freqs``
checked against it, and the ``gemma4`` tokenizer (docs/formats.md, "Converter transforms imp undoes"; llama.cpp conversion/gemma.py
``Gemma4Model``).

The metadata keys (prefix ``gemma4.``) give the per-layer view directly: ``sliding_window_pattern``
(true = sliding layer), ``attention.head_count_kv`` (a per-layer array when the global layers have
their own kv-head count), ``key_length`` / ``key_length_swa`` (global / sliding head dims),
``rope.freq_base`` / ``rope.freq_base_swa``. Two facts are not in the metadata: ``attention_k_eq_v``
is read from the tensors (global layers without ``attn_v``), and the global layers' partial rotary
factor is transformers' Gemma-4 default (0.25), which ``rope_freqs`` must confirm: the converter
writes 1.0 for each rotated pair and 1e30 (no rotation) for the rest; any other pattern is refused.
"""

from __future__ import annotations

from typing import Any

import torch

from imp_core.checkpoint.gguf_names import metadata_value
from imp_core.errors import CheckpointError

SLIDING, FULL = "sliding_attention", "full_attention"
FULL_PARTIAL_ROTARY = 0.25  # transformers' Gemma4TextConfig default for full_attention (proportional)
UNROTATED = 1e30


def _per_layer(value: Any, n: int, key: str, where: str) -> list[int]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise CheckpointError(f"{where}: {key} has {len(value)} entries for {n} layers")
        return [int(v) for v in value]
    return [int(value)] * n


def _one(values: list[int], kinds: list[str], kind: str, key: str, where: str) -> int | None:
    picked = {v for v, k in zip(values, kinds) if k == kind}
    if len(picked) > 1:
        raise CheckpointError(f"{where}: {key} differs between {kind} layers ({sorted(picked)}); the gemma4 "
                              f"plugin supports one value per layer type")
    return picked.pop() if picked else None


def config_from_gguf(metadata: dict[str, Any], tensors: dict[str, Any], *, where: str) -> dict[str, Any]:
    """A text_config-like dict for ``Gemma4Config`` from the ``gemma4.*`` keys (and the tensor list)."""
    arch = metadata["general.architecture"]

    def key(k: str, default: Any = ...) -> Any:
        return metadata_value(metadata, f"{arch}.{k}", where, default)

    n = int(key("block_count"))
    pattern = key("attention.sliding_window_pattern")
    if not isinstance(pattern, (list, tuple)) or len(pattern) != n:
        raise CheckpointError(f"{where}: {arch}.attention.sliding_window_pattern must list one bool per layer "
                              f"({n}), got {pattern!r}")
    kinds = [SLIDING if s else FULL for s in pattern]
    kv = _per_layer(key("attention.head_count_kv"), n, f"{arch}.attention.head_count_kv", where)
    ff = _per_layer(key("feed_forward_length"), n, f"{arch}.feed_forward_length", where)
    if len(set(ff)) != 1:
        raise CheckpointError(f"{where}: {arch}.feed_forward_length varies per layer (double-wide MLP); not "
                              f"supported by the gemma4 plugin")
    head_dim, global_dim = int(key("attention.key_length_swa")), int(key("attention.key_length"))
    for k, want in (("attention.value_length_swa", head_dim), ("attention.value_length", global_dim),
                    ("rope.dimension_count_swa", head_dim), ("rope.dimension_count", global_dim)):
        got = int(key(k, want))
        if got != want:
            raise CheckpointError(f"{where}: {arch}.{k} is {got}, expected {want} (the gemma4 plugin rotates "
                                  f"whole sliding heads and uses proportional RoPE over whole global heads)")
    full_layers = [i for i, t in enumerate(kinds) if t == FULL]
    has_v = [f"blk.{i}.attn_v.weight" in tensors for i in full_layers]
    if any(has_v) and not all(has_v):
        raise CheckpointError(f"{where}: some global layers have attn_v and others do not; expected all "
                              f"(attention_k_eq_v false) or none (true)")
    if "token_embd.weight" not in tensors:
        raise CheckpointError(f"{where}: GGUF has no token_embd.weight")
    experts = int(key("expert_count", 0))
    sliding_kv = _one(kv, kinds, SLIDING, f"{arch}.attention.head_count_kv", where)
    cfg: dict[str, Any] = {
        "architectures": ["Gemma4ForCausalLM (GGUF gemma4)"],
        "model_type": "gemma4_text",
        "vocab_size": int(tensors["token_embd.weight"].shape[0]),
        "hidden_size": int(key("embedding_length")),
        "intermediate_size": ff[0],
        "num_hidden_layers": n,
        "num_attention_heads": int(key("attention.head_count")),
        "num_key_value_heads": sliding_kv if sliding_kv is not None else kv[0],
        "head_dim": head_dim,
        "attention_k_eq_v": bool(full_layers) and not any(has_v),
        "per_layer_config": {str(i): {"head_dim": global_dim, "num_key_value_heads": kv[i]} for i in full_layers},
        "layer_types": kinds,
        "sliding_window": int(key("attention.sliding_window")),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-6)),
        "final_logit_softcapping": key("final_logit_softcapping", None),
        "rope_parameters": {
            SLIDING: {"rope_type": "default", "rope_theta": float(key("rope.freq_base_swa", 10_000.0))},
            FULL: {"rope_type": "proportional", "rope_theta": float(key("rope.freq_base")),
                   "partial_rotary_factor": FULL_PARTIAL_ROTARY},
        },
        "enable_moe_block": experts > 0,
        "num_experts": experts,
        "top_k_experts": int(key("expert_used_count", 0)),
        "moe_intermediate_size": int(key("expert_feed_forward_length", 0)),
        "hidden_size_per_layer_input": int(key("embedding_length_per_layer_input", 0)),
        "num_kv_shared_layers": int(key("attention.shared_kv_layers", 0)),
        "max_position_embeddings": int(key("context_length", 131072)),
        "tie_word_embeddings": "output.weight" not in tensors,
        "bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": metadata.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": metadata.get("tokenizer.ggml.padding_token_id"),
    }
    return cfg


def check_rope_freqs(freqs: torch.Tensor, cfg: Any, where: str) -> None:
    """Refuse a ``rope_freqs`` that does not mark exactly the pairs the config's global RoPE rotates."""
    full = [layer for layer in cfg.layers if layer.layer_type == FULL]
    if not full:
        return
    rope = cfg.rope[FULL]
    head_dim = full[0].head_dim
    half = head_dim // 2
    n_rot = int(rope.partial_rotary_factor * head_dim // 2) if rope.rope_type == "proportional" else half
    f = freqs.float().reshape(-1)
    if f.numel() != half:
        raise CheckpointError(f"{where}: rope_freqs has {f.numel()} entries, expected {half} (half the global "
                              f"head dim {head_dim})")
    rotated = int((f == 1.0).sum())
    ok = bool((f[:n_rot] == 1.0).all()) and bool((f[n_rot:] >= UNROTATED * 0.5).all())
    if not ok:
        raise CheckpointError(
            f"{where}: rope_freqs marks {rotated} of {half} pairs as rotated (1.0), but the config's "
            f"{rope.rope_type} RoPE (partial_rotary_factor {rope.partial_rotary_factor:g} of {head_dim}) rotates "
            f"the first {n_rot} and leaves the rest (1e30); this file's RoPE is not supported")


def gemma4_tokenizer(metadata: dict[str, Any], *, source: str):
    """The imp Tokenizer of ``tokenizer.ggml.model = gemma4``: BPE over ``tokens`` with the file's
    ``merges`` and byte fallback, spaces as "▁" (no prefix unless ``add_space_prefix``)."""
    import tokenizers
    from tokenizers import decoders, models, normalizers

    from imp_core.text.gguf_tokenizer import tokenizer_from_gguf

    tokens = metadata.get("tokenizer.ggml.tokens")
    merges = metadata.get("tokenizer.ggml.merges")
    if not isinstance(tokens, list) or not isinstance(merges, list):
        raise CheckpointError(f"{source}: tokenizer.ggml.model 'gemma4' needs tokenizer.ggml.tokens and "
                              f"tokenizer.ggml.merges")
    unk_id = metadata.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if isinstance(unk_id, int) and 0 <= unk_id < len(tokens) else None
    model = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[tuple(m.split(" ", 1)) for m in merges],
                       unk_token=unk, fuse_unk=True, byte_fallback=True)
    backend = tokenizers.Tokenizer(model)
    prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", False))
    steps = [normalizers.Replace(" ", "▁")]
    backend.normalizer = normalizers.Sequence(([normalizers.Prepend("▁")] if prefix else []) + steps)
    strip = [decoders.Strip(" ", 1, 0)] if prefix else []
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         *strip])
    meta = {**metadata, "tokenizer.huggingface.json": backend.to_str()}
    return tokenizer_from_gguf(meta, source=source)

