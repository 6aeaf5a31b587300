"""Real-shape configs (text decoder) for benchmarks and full-size smoke runs with random weights.

Values: the text_config of Mistral-Small-3.2-24B-Instruct-2506's config.json.
"""

MISTRAL_SMALL_3_2_24B = {
    "architecture": "Mistral3ForConditionalGeneration",
    "vocab_size": 131072, "hidden_size": 5120, "intermediate_size": 32768, "num_hidden_layers": 40,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-5,
    "rope_theta": 1e9, "max_position_embeddings": 131072, "sliding_window": None, "hidden_act": "silu",
    "bos_token_id": 1, "eos_token_id": 2,
}

PRESETS = {"mistral-small-3.2-24b": MISTRAL_SMALL_3_2_24B}


#: how each published (or common) checkpoint stores Mistral-Small-3.2's weights, for random
#: real-shape models (tensor role or name fragment -> qtype; unnamed roles stay bf16)
FORMAT_MIXES = {
    "bf16": {},
    "nvfp4": {"attention": "nvfp4", "mlp": "nvfp4"},  # NVFP4 releases: every linear, lm_head BF16
    "fp8": {"attention": "fp8", "mlp": "fp8"},
    "gguf-q4_k_m": {"down_proj": "gguf:Q6_K", "v_proj": "gguf:Q6_K", "lm_head": "gguf:Q6_K",
                    "attention": "gguf:Q4_K", "mlp": "gguf:Q4_K"},
    "gguf-q8_0": {"attention": "gguf:Q8_0", "mlp": "gguf:Q8_0", "lm_head": "gguf:Q8_0"},
}

# A two-layer cut of the same shapes (small vocab and width) that runs `imp bench` on a CPU.
MISTRAL_MINI = {**MISTRAL_SMALL_3_2_24B, "num_hidden_layers": 2, "hidden_size": 256, "intermediate_size": 512,
                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 4096}

PRESETS["mistral-mini"] = MISTRAL_MINI
