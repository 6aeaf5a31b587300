"""Qwen3.5/3.6 GGUF files (``qwen35moe``, dense ``qwen35``): the config from the metadata, and the
converter's transforms undone (docs/formats.md, "Converter transforms imp undoes"; llama.cpp ``Qwen3NextModel.modify_tensors`` and
``_LinearAttentionVReorderBase``).

What the converter did, and what undoes it here:
- every ``*norm.weight`` except the DeltaNet's gated norm (``ssm_norm``) was stored as ``w + 1``
  (Qwen's zero-centred norms) -> ``w - 1``;
- ``A_log`` was stored as ``ssm_a = -exp(A_log)`` -> used as is (``linear_attn.A``, see names.py);
- ``conv1d.weight`` [C, 1, K] was squeezed to [C, K] -> unsqueezed;
- with fewer key than value heads, the value heads were moved from HF's grouped order (the r
  value heads of key head g are consecutive) to a tiled order (stored head ``v * Hk + g`` holds HF
  head ``g * r + v``) in the V rows of ``attn_qkv``, the rows of ``attn_gate``, ``ssm_alpha``,
  ``ssm_beta``, the entries of ``ssm_a`` / ``ssm_dt``, the V channels of ``ssm_conv1d`` and the
  input columns of ``ssm_out`` -> permuted back. Row permutations keep packed weights packed
  (``permute_rows``); the column permutation moves whole blocks when the head size is a multiple of
  the block (else the weight is dequantised, see ``permute_columns``);
- the fused experts ``gate_up_proj`` were split into ``ffn_gate_exps`` / ``ffn_up_exps`` -> joined
  by ``imp_core.model.loading.load_experts``.
Newer converters append the multi-token-prediction layer(s) as extra blocks and say so in
``nextn_predict_layers``; those blocks are not part of the text model and are skipped.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import torch

from imp_core.checkpoint.gguf_names import metadata_value, permute_rows
from imp_core.errors import CheckpointError
from imp_core.quant import QTensor
from imp_core.quant.gguf_blocks import GGUF_BLOCK, normalize_gguf_type

ARCH_LABEL = {"qwen35moe": "Qwen3_5MoeForCausalLM (GGUF qwen35moe)",
              "qwen35": "Qwen3_5ForCausalLM (GGUF qwen35)"}
MODEL_TYPE = {"qwen35moe": "qwen3_5_moe_text", "qwen35": "qwen3_5_text"}
SHIFTED_NORMS = ("input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_norm.weight",
                 "self_attn.k_norm.weight")
_BLOCK = re.compile(r"^(?:blk|model\.layers)\.(\d+)\.")


def config_from_gguf(metadata: dict[str, Any], tensors: dict[str, Any], *, where: str) -> dict[str, Any]:
    """A text_config-like dict for ``Qwen36Config`` from the ``qwen35moe.*`` / ``qwen35.*`` keys."""
    arch = metadata["general.architecture"]

    def key(k: str, default: Any = ...) -> Any:
        return metadata_value(metadata, f"{arch}.{k}", where, default)

    blocks = int(key("block_count"))
    nextn = int(key("nextn_predict_layers", 0))
    layers = blocks - nextn
    head_dim = int(key("attention.key_length"))
    value_length = int(key("attention.value_length", head_dim))
    if value_length != head_dim:
        raise CheckpointError(f"{where}: {arch}.attention.value_length {value_length} differs from key_length "
                              f"{head_dim}; the qwen36 plugin expects one head_dim")
    rope_dims = int(key("rope.dimension_count"))
    if rope_dims <= 0 or rope_dims > head_dim or rope_dims % 2:
        raise CheckpointError(f"{where}: {arch}.rope.dimension_count is {rope_dims}, expected an even number "
                              f"of rotated dims <= head_dim {head_dim}")
    v_heads = int(key("ssm.time_step_rank"))
    inner = int(key("ssm.inner_size"))
    if v_heads <= 0 or inner % v_heads:
        raise CheckpointError(f"{where}: {arch}.ssm.inner_size {inner} is not a multiple of "
                              f"ssm.time_step_rank {v_heads} (the value heads)")
    if "token_embd.weight" not in tensors:
        raise CheckpointError(f"{where}: GGUF has no token_embd.weight")
    label = ARCH_LABEL.get(arch, arch)
    cfg: dict[str, Any] = {
        "architectures": [label],
        "model_type": MODEL_TYPE.get(arch, arch),
        "vocab_size": int(tensors["token_embd.weight"].shape[0]),
        "hidden_size": int(key("embedding_length")),
        "num_hidden_layers": layers,
        "full_attention_interval": int(key("full_attention_interval", 4)),
        "num_attention_heads": int(key("attention.head_count")),
        "num_key_value_heads": int(key("attention.head_count_kv")),
        "head_dim": head_dim,
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(key("rope.freq_base")),
        "partial_rotary_factor": rope_dims / head_dim,
        "linear_conv_kernel_dim": int(key("ssm.conv_kernel")),
        "linear_key_head_dim": int(key("ssm.state_size")),
        "linear_num_key_heads": int(key("ssm.group_count")),
        "linear_num_value_heads": v_heads,
        "linear_value_head_dim": inner // v_heads,
        "max_position_embeddings": int(key("context_length", 32768)),
        "tie_word_embeddings": "output.weight" not in tensors,
        "bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": metadata.get("tokenizer.ggml.eos_token_id"),
    }
    sections = key("rope.dimension_sections", None)
    if sections:
        cfg["mrope_section"] = [int(s) for s in list(sections)[:3]]
        cfg["mrope_interleaved"] = True
    if arch == "qwen35":
        cfg["intermediate_size"] = int(key("feed_forward_length"))
    else:
        cfg.update(num_experts=int(key("expert_count")), num_experts_per_tok=int(key("expert_used_count")),
                   moe_intermediate_size=int(key("expert_feed_forward_length")),
                   shared_expert_intermediate_size=int(key("expert_shared_feed_forward_length")))
    return cfg


def mtp_rename(num_layers: int) -> Callable[[str], str | None]:
    """Drop the blocks past the text model (the MTP layers newer converters append)."""
    def rename(name: str) -> str | None:
        m = _BLOCK.match(name)
        return None if m and int(m.group(1)) >= num_layers else name

    return rename


# -- value-head order ---------------------------------------------------------------------------
def hf_to_stored_heads(num_k_heads: int, num_v_heads: int) -> torch.Tensor:
    """perm[h] = the stored (tiled) position of HF (grouped) value head h."""
    r = num_v_heads // num_k_heads
    h = torch.arange(num_v_heads)
    return (h % r) * num_k_heads + h // r


def expand_heads(head_perm: torch.Tensor, head_dim: int) -> torch.Tensor:
    """A head permutation -> the permutation of the head_dim-sized rows/columns it moves."""
    return (head_perm[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


def permute_columns(w: Any, perm: torch.Tensor, group: int) -> Any:
    """``w[..., perm]`` along the input columns, where ``perm`` moves whole groups of ``group`` columns.

    Dense tensors and per-tensor/per-channel FP8 are permuted as they are; GGUF block types and NVFP4
    move whole blocks when the block divides ``group`` (then a block never spans two groups). Any
    other packed weight is dequantised (float32) and permuted.
    """
    if isinstance(w, torch.Tensor):
        return w.index_select(-1, perm.to(w.device))
    if not isinstance(w, QTensor):
        raise CheckpointError(f"permute_columns: expected a tensor or QTensor, got {type(w).__name__}")
    cols = int(w.shape[-1])
    if w.qtype == "fp8" and w.meta.get("granularity") in ("tensor", "channel"):
        return QTensor("fp8", w.data.index_select(-1, perm.to(w.data.device)), w.shape, scales=dict(w.scales),
                       meta=dict(w.meta))
    if w.qtype.startswith("gguf:"):
        elems, nbytes = GGUF_BLOCK[normalize_gguf_type(w.qtype)]
        if group % elems == 0:
            blocks = perm.reshape(-1, elems)[:, 0] // elems
            data = w.data.unflatten(-1, (cols // elems, nbytes)).index_select(-2, blocks.to(w.data.device))
            return QTensor(w.qtype, data.flatten(-2), w.shape, scales=dict(w.scales), meta=dict(w.meta))
    if w.qtype == "nvfp4" and group % 16 == 0:
        blocks = (perm.reshape(-1, 16)[:, 0] // 16).to(w.data.device)
        data = w.data.unflatten(-1, (cols // 16, 8)).index_select(-2, blocks).flatten(-2)
        scales = dict(w.scales)
        scales["block"] = w.scales["block"].index_select(-1, blocks)
        return QTensor("nvfp4", data, w.shape, scales=scales, meta=dict(w.meta))
    dense = w.dequantize(torch.float32)
    return dense.index_select(-1, perm.to(dense.device))


def _shift_back(w: Any) -> Any:
    if not isinstance(w, torch.Tensor):
        raise CheckpointError(f"a Qwen GGUF norm weight is stored as {getattr(w, 'qtype', type(w).__name__)}; "
                              f"expected a float tensor")
    return w.float() - 1  # in fp32 whatever the stored float type: the model dtype cast comes after


def gguf_transforms(cfg: Any) -> dict[str, Callable[[Any], Any]]:
    """{HF name or per-layer suffix: fn(stored) -> HF layout} for a ``Qwen36Config`` read from GGUF."""
    out: dict[str, Callable[[Any], Any]] = {"model.norm.weight": _shift_back}
    out.update({name: _shift_back for name in SHIFTED_NORMS})
    hk, hv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
    dv, key_dim = cfg.linear_value_head_dim, cfg.linear_key_dim
    heads = hf_to_stored_heads(hk, hv)
    v_rows = expand_heads(heads, dv)
    qkv_rows = torch.cat((torch.arange(2 * key_dim), 2 * key_dim + v_rows))
    a = "linear_attn."

    def conv(w: Any) -> Any:
        if not isinstance(w, torch.Tensor):
            raise CheckpointError("a Qwen GGUF ssm_conv1d weight must be stored as floats")
        w = w.reshape(w.shape[0], 1, w.shape[-1])  # squeezed [C, K] -> [C, 1, K]
        return w.index_select(0, qkv_rows.to(w.device))

    out.update({
        a + "conv1d.weight": conv,
        a + "in_proj_qkv.weight": lambda w: permute_rows(w, qkv_rows),
        a + "in_proj_z.weight": lambda w: permute_rows(w, v_rows),
        a + "in_proj_a.weight": lambda w: permute_rows(w, heads),
        a + "in_proj_b.weight": lambda w: permute_rows(w, heads),
        a + "A": lambda w: permute_rows(w.reshape(-1), heads),
        a + "dt_bias": lambda w: permute_rows(w.reshape(-1), heads),
        a + "out_proj.weight": lambda w: permute_columns(w, v_rows, dv),
        "mlp.shared_expert_gate.weight": lambda w: w.reshape(1, -1) if isinstance(w, torch.Tensor) else w,
    })
    return out
