"""Qwen3.5/3.6 tensor names: the GGUF table for llama.cpp's ``qwen35moe`` and its dense sibling ``qwen35``.

docs/formats.md ("Converter transforms imp undoes") and gguf's ``MODEL_TENSORS``. Names without an HF counterpart are imp's own:
- ``ffn_gate_exps`` / ``ffn_up_exps`` are the two halves of HF's fused ``mlp.experts.gate_up_proj``
  (the converter splits it); they load as ``mlp.experts.gate_proj`` / ``mlp.experts.up_proj``
  ([E, I, H] each) and ``imp_core.model.loading.load_experts`` joins them again (gate rows first);
- ``ssm_a`` holds ``-exp(A_log)`` (the converter's transform); it loads as ``linear_attn.A`` and
  the DeltaNet uses it as the decay rate directly, so no log/exp round trip changes its bits.
"""

from __future__ import annotations

from imp_core.checkpoint.gguf_names import COMMON_TOP, GGUFNameTable

GGUF_ARCHITECTURES = ("qwen35moe", "qwen35")

GGUF_TOP = dict(COMMON_TOP)

GGUF_BLOCK = {
    "attn_norm.weight": "input_layernorm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    # gated full attention
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    # Gated DeltaNet
    "attn_qkv.weight": "linear_attn.in_proj_qkv.weight",
    "attn_gate.weight": "linear_attn.in_proj_z.weight",
    "ssm_alpha.weight": "linear_attn.in_proj_a.weight",
    "ssm_beta.weight": "linear_attn.in_proj_b.weight",
    "ssm_conv1d.weight": "linear_attn.conv1d.weight",
    "ssm_a": "linear_attn.A",
    "ssm_dt.bias": "linear_attn.dt_bias",
    "ssm_norm.weight": "linear_attn.norm.weight",
    "ssm_out.weight": "linear_attn.out_proj.weight",
    # sparse MoE
    "ffn_gate_inp.weight": "mlp.gate.weight",
    "ffn_gate_exps.weight": "mlp.experts.gate_proj",
    "ffn_up_exps.weight": "mlp.experts.up_proj",
    "ffn_gate_up_exps.weight": "mlp.experts.gate_up_proj",
    "ffn_down_exps.weight": "mlp.experts.down_proj",
    "ffn_gate_shexp.weight": "mlp.shared_expert.gate_proj.weight",
    "ffn_up_shexp.weight": "mlp.shared_expert.up_proj.weight",
    "ffn_down_shexp.weight": "mlp.shared_expert.down_proj.weight",
    "ffn_gate_inp_shexp.weight": "mlp.shared_expert_gate.weight",
    # dense qwen35 feed-forward
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}

GGUF_NAMES = GGUFNameTable(top=GGUF_TOP, block=GGUF_BLOCK)
