"""Real-shape configs (text decoder) for benchmarks and full-size smoke runs with random weights.

Values: the text_config of google/gemma-4-26B-A4B-it's config.json (in the published spelling, in the published spelling
with global_head_dim / num_global_key_value_heads rather than transformers' per_layer_config).
"""

GEMMA_4_26B_A4B = {
    "architecture": "Gemma4ForConditionalGeneration",
    "vocab_size": 262144, "hidden_size": 2816, "intermediate_size": 2112, "num_hidden_layers": 30,
    "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256,
    "global_head_dim": 512, "num_global_key_value_heads": 2, "attention_k_eq_v": True,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 5,
    "sliding_window": 1024,
    "rope_parameters": {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "proportional", "rope_theta": 1000000.0, "partial_rotary_factor": 0.25},
    },
    "rms_norm_eps": 1e-6, "final_logit_softcapping": 30.0, "hidden_activation": "gelu_pytorch_tanh",
    "enable_moe_block": True, "num_experts": 128, "top_k_experts": 8, "moe_intermediate_size": 704,
    "hidden_size_per_layer_input": 0, "num_kv_shared_layers": 0, "use_double_wide_mlp": False,
    "use_bidirectional_attention": "vision", "attention_bias": False,
    "tie_word_embeddings": True, "max_position_embeddings": 262144,
    "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": [1, 106],
}

# The same structure at a size that runs anywhere in seconds (CPU dry runs of the GPU smoke script).
GEMMA_4_MINI = {
    **GEMMA_4_26B_A4B, "vocab_size": 4096, "hidden_size": 256, "intermediate_size": 192, "num_hidden_layers": 6,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "global_head_dim": 128,
    "num_global_key_value_heads": 1, "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
    "sliding_window": 64, "num_experts": 16, "top_k_experts": 4, "moe_intermediate_size": 64,
    "max_position_embeddings": 4096,
}

PRESETS = {"gemma-4-26b-a4b": GEMMA_4_26B_A4B, "gemma-4-mini": GEMMA_4_MINI}


#: how each published (or common) checkpoint stores Gemma-4's weights, for random real-shape
#: models (tensor role or name fragment -> qtype; unnamed roles, the tied head among them, stay bf16)
FORMAT_MIXES = {
    "bf16": {},
    # NVFP4 releases: dense MLP and experts NVFP4, attention and the tied embedding/head BF16
    "nvfp4": {"mlp": "nvfp4", "experts": "nvfp4"},
    "fp8": {"mlp": "fp8", "experts": "fp8", "attention": "fp8"},
    # experts' down rows of 704 take Q8_0 (no whole 256-element K-quant block), as in real files
    "gguf-q4_k_m": {"down_proj": "gguf:Q6_K", "mlp": "gguf:Q4_K", "experts": "gguf:Q4_K",
                    "attention": "gguf:Q4_K"},
    "gguf-q8_0": {"mlp": "gguf:Q8_0", "experts": "gguf:Q8_0", "attention": "gguf:Q8_0"},
}
