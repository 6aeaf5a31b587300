"""Real-shape configs (text decoder) for benchmarks and full-size smoke runs with random weights.

Values: the text_config of Qwen/Qwen3.6-35B-A3B's config.json (Qwen3.5-35B-A3B is Qwen3.5-35B-A3B is
identical in every field).
"""

QWEN3_6_35B_A3B = {
    "architecture": "Qwen3_5MoeForConditionalGeneration", "model_type": "qwen3_5_moe_text",
    "vocab_size": 248320, "hidden_size": 2048, "num_hidden_layers": 40, "full_attention_interval": 4,
    "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256, "attention_bias": False,
    "linear_num_key_heads": 16, "linear_num_value_heads": 32, "linear_key_head_dim": 128,
    "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4,
    "num_experts": 256, "num_experts_per_tok": 8, "moe_intermediate_size": 512,
    "shared_expert_intermediate_size": 512, "hidden_act": "silu", "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                        "mrope_section": [11, 11, 10], "mrope_interleaved": True},
    "max_position_embeddings": 262144, "tie_word_embeddings": False,
    "bos_token_id": 248044, "eos_token_id": 248044, "dtype": "bfloat16",
}

# A few-layer cut of the same shapes (one full [L L L F] period, 16 experts, small vocab) for
# dry runs of the smoke script on a CPU.
QWEN3_6_MINI = {
    **QWEN3_6_35B_A3B, "num_hidden_layers": 4, "num_experts": 16, "vocab_size": 4096,
    "hidden_size": 256, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
    "num_attention_heads": 4, "moe_intermediate_size": 64, "shared_expert_intermediate_size": 64,
}

PRESETS = {"qwen3.6-35b-a3b": QWEN3_6_35B_A3B, "qwen3.6-mini": QWEN3_6_MINI}


#: how each published (or common) checkpoint stores Qwen3.6's weights, for random real-shape
#: models (tensor role or name fragment -> qtype; unnamed roles stay bf16)
FORMAT_MIXES = {
    "bf16": {},
    # nvidia's ModelOpt NVFP4 release: experts, shared expert and lm_head NVFP4, attention and
    # DeltaNet projections FP8, routers and gates BF16
    "nvfp4": {"experts": "nvfp4", "shared_expert": "nvfp4", "lm_head": "nvfp4", "attention": "fp8",
              "linear_attention": "fp8"},
    # Qwen's FP8 release: every linear in 128x128 blocks, lm_head BF16
    "fp8": {"experts": "fp8", "shared_expert": "fp8", "attention": "fp8", "linear_attention": "fp8"},
    "gguf-q4_k_m": {"down_proj": "gguf:Q6_K", "lm_head": "gguf:Q6_K", "experts": "gguf:Q4_K",
                    "shared_expert": "gguf:Q4_K", "attention": "gguf:Q4_K", "linear_attention": "gguf:Q4_K"},
    "gguf-q8_0": {"experts": "gguf:Q8_0", "shared_expert": "gguf:Q8_0", "attention": "gguf:Q8_0",
                  "linear_attention": "gguf:Q8_0", "lm_head": "gguf:Q8_0"},
}
