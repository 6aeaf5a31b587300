"""Type and range checks on the ``<arch>.*`` GGUF metadata before a family turns it into a config.

GGUF stores a type with every value, but nothing stops a file from giving ``block_count`` as a
string or ``head_count`` as 0. Families convert these keys with ``int()`` and divide by them, so
the well-known keys are checked here first, each refusal naming the file, the key, the value and
what was expected.
"""

from __future__ import annotations

from typing import Any, Mapping

from imp_core.errors import CheckpointError

# keys that count something (a per-layer array of counts is allowed), and those that must be > 0
COUNT_KEYS = (
    "block_count", "context_length", "embedding_length", "feed_forward_length", "vocab_size",
    "attention.head_count", "attention.head_count_kv", "attention.key_length", "attention.value_length",
    "attention.key_length_swa", "attention.value_length_swa", "attention.sliding_window",
    "attention.shared_kv_layers", "rope.dimension_count", "rope.dimension_count_swa",
    "expert_count", "expert_used_count", "expert_feed_forward_length", "expert_shared_feed_forward_length",
    "nextn_predict_layers", "full_attention_interval", "embedding_length_per_layer_input",
    "ssm.conv_kernel", "ssm.state_size", "ssm.group_count", "ssm.time_step_rank", "ssm.inner_size",
)
POSITIVE_KEYS = ("block_count", "embedding_length", "attention.head_count", "attention.key_length",
                 "attention.value_length", "ssm.time_step_rank", "ssm.group_count", "full_attention_interval")
NUMBER_KEYS = ("rope.freq_base", "rope.freq_base_swa", "attention.layer_norm_rms_epsilon",
               "final_logit_softcapping")
MAX_COUNT = 2**40  # far above any real model; keeps products and allocations finite


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_arch_metadata(metadata: Mapping[str, Any], arch: str, where: str) -> None:
    for suffix in COUNT_KEYS:
        key = f"{arch}.{suffix}"
        if key not in metadata:
            continue
        value = metadata[key]
        items = value if isinstance(value, list) else [value]
        low = 1 if suffix in POSITIVE_KEYS else 0
        if not items or not all(_is_int(v) and low <= v <= MAX_COUNT for v in items):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            want = "a positive integer" if low else "a non-negative integer"
            raise CheckpointError(f"{where}: GGUF metadata '{key}' is {shown}, expected {want}"
                                  + (" (or one per layer)" if suffix not in POSITIVE_KEYS else ""))
    for suffix in NUMBER_KEYS:
        key = f"{arch}.{suffix}"
        value = metadata.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or value != value or abs(value) == float("inf")):
            raise CheckpointError(f"{where}: GGUF metadata '{key}' is {value!r:.60}, expected a finite number")
