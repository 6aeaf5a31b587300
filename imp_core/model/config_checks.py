"""Bounds on the size keys of a family config, checked before the family's own validation runs.

A family's pydantic model checks signs and relations (positive head counts, divisibility); the
bounds here keep every size finite and representable before anything is built from it: a
config with 10**11 layers would otherwise make the family's validators build a list of 10**11
layer types, and one with a 10**11-token vocabulary cannot be indexed with 32-bit token ids.
"""

from __future__ import annotations

from typing import Any, Mapping

MAX_LAYERS = 4096
MAX_SIZE = 2**31 - 1  # token ids and row indices are 32-bit in tokenizers and kernels
SIZE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size",
             "shared_expert_intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
             "num_experts", "num_experts_per_tok", "top_k_experts", "max_position_embeddings",
             "sliding_window", "global_head_dim", "num_global_key_value_heads", "linear_num_key_heads",
             "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim", "linear_conv_kernel_dim",
             "full_attention_interval")


def size_problem(data: Mapping[str, Any]) -> tuple[str, str] | None:
    """(key, what is wrong) for the first out-of-range size key in ``data``, or None."""
    bounds = [("num_hidden_layers", MAX_LAYERS), *((k, MAX_SIZE) for k in SIZE_KEYS)]
    for key, bound in bounds:
        value = data.get(key)
        if value is None:
            continue
        integral = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
        if not integral:
            return key, f"is {value!r:.40}, expected an integer"
        if not 0 <= value <= bound:
            return key, f"is {value:.0f}, expected 0..{bound}"
    return None
