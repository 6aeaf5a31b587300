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
