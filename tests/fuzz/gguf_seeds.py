"""Tiny GGUF files (a few hundred bytes to a few KB) for the fuzz corpus and the reader tests.

``tiny_gguf(arch, overrides)`` writes a file with the metadata a family's ``config_from_gguf``
reads, a three-token tokenizer and two small tensors (F32 and Q8_0). ``overrides`` replaces or
adds metadata values (the GGUF value type follows the Python type: str, bool, int, float, list),
and a value of ``None`` removes the key, so tests can build exactly the damaged file they need.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

LLAMA = {"block_count": 1, "context_length": 64, "embedding_length": 32, "feed_forward_length": 64,
         "attention.head_count": 2, "attention.head_count_kv": 1, "attention.key_length": 16,
         "attention.value_length": 16, "rope.dimension_count": 16, "rope.freq_base": 10000.0,
         "attention.layer_norm_rms_epsilon": 1e-5}
QWEN35 = {"block_count": 4, "context_length": 64, "embedding_length": 32, "feed_forward_length": 64,
          "attention.head_count": 2, "attention.head_count_kv": 1, "attention.key_length": 16,
          "attention.value_length": 16, "rope.freq_base": 10000.0, "attention.layer_norm_rms_epsilon": 1e-6,
          "ssm.conv_kernel": 4, "ssm.state_size": 8, "ssm.group_count": 2, "ssm.time_step_rank": 4,
          "ssm.inner_size": 32, "full_attention_interval": 4, "rope.dimension_count": 4}
GEMMA4 = {"block_count": 2, "context_length": 64, "embedding_length": 32, "feed_forward_length": 64,
          "attention.head_count": 2, "attention.head_count_kv": [1, 1], "attention.key_length": 32,
          "attention.value_length": 32, "attention.key_length_swa": 16, "attention.value_length_swa": 16,
          "rope.freq_base": 1e6, "rope.freq_base_swa": 1e4, "attention.sliding_window": 16,
          "attention.sliding_window_pattern": [True, False], "attention.layer_norm_rms_epsilon": 1e-6,
          "attention.shared_kv_layers": 0, "embedding_length_per_layer_input": 0,
          "rope.dimension_count": 32, "rope.dimension_count_swa": 16}
ARCHS = {"llama": LLAMA, "qwen35": QWEN35, "gemma4": GEMMA4}


def _add(writer: Any, key: str, value: Any) -> None:
    import gguf

    t = gguf.GGUFValueType
    if isinstance(value, list):
        writer.add_array(key, value)
    elif isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_key_value(key, value, t.UINT32 if 0 <= value < 2**32 else t.INT64)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    else:
        writer.add_string(key, str(value))


def tiny_gguf(arch: str = "llama", overrides: dict[str, Any] | None = None, *,
              tensors: bool = True) -> bytes:
    import gguf

    meta: dict[str, Any] = {"general.architecture": arch, "general.name": "tiny"}
    meta.update({f"{arch}.{k}": v for k, v in ARCHS[arch].items()})
    meta.update({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "default",
                 "tokenizer.ggml.tokens": ["a", "b", "ab"], "tokenizer.ggml.token_type": [1, 1, 1],
                 "tokenizer.ggml.merges": ["a b"], "tokenizer.ggml.bos_token_id": 0,
                 "tokenizer.ggml.eos_token_id": 1})
    for key, value in (overrides or {}).items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny.gguf"
        writer = gguf.GGUFWriter(path, arch=None)
        for key, value in meta.items():
            _add(writer, key, value)
        if tensors:
            writer.add_tensor("output_norm.weight", np.linspace(0.5, 1.5, 32, dtype=np.float32))
            raw = np.zeros((3, 34), dtype=np.uint8)  # Q8_0: 3 rows of one 32-element block
            writer.add_tensor("token_embd.weight", raw, raw_shape=raw.shape,
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()
