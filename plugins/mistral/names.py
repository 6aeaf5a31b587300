"""Mistral/Llama tensor names: the GGUF table for llama.cpp's ``llama`` and ``mistral3`` arches.

Both arches list the same tensors (gguf ``MODEL_TENSORS``); note that
``post_attention_layernorm`` is ``ffn_norm`` here. ``rope_freqs`` is only written for
llama3-style rope scaling, which this family refuses (config.py), so it is not mapped.
"""

from __future__ import annotations

from imp_core.checkpoint.gguf_names import COMMON_TOP, GGUFNameTable

GGUF_ARCHITECTURES = ("llama", "mistral3")

GGUF_TOP = dict(COMMON_TOP)

GGUF_BLOCK = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}

GGUF_NAMES = GGUFNameTable(top=GGUF_TOP, block=GGUF_BLOCK)
