"""GGUF files of the tiny Qwen3.6 (``qwen35moe``) and Gemma-4 (``gemma4``) models, written like llama.cpp's
convert_hf_to_gguf.py (+ llama-quantize) would, and their dequantised twins.

gguf's ``GGUFWriter`` with the real arch names, gguf's own name map (``get_tensor_name_map``), the
metadata keys of docs/formats.md ("Converter transforms imp undoes") and the converter's transforms applied, so the loader must undo
them (conversion/qwen.py ``Qwen3NextModel.modify_tensors`` + ``_LinearAttentionVReorderBase``,
``Qwen2MoeModel`` gate_up split; conversion/gemma.py ``Gemma4Model``):
- Qwen: ``w + 1`` on every norm but ``linear_attn.norm``; ``ssm_a = -exp(A_log)`` (computed in fp32,
  as the published fp32 A_log would be); conv1d squeezed; value heads re-tiled (V rows of in_proj_qkv,
  rows of in_proj_z / in_proj_a / in_proj_b, A_log, dt_bias, the conv's V channels, the columns of
  out_proj); experts split into ``ffn_gate_exps`` / ``ffn_up_exps``; dt_bias as ``ssm_dt.bias``.
- Gemma: fused ``ffn_gate_up_exps``; ``router.scale`` -> ``ffn_gate_inp.scale``, ``per_expert_scale`` ->
  ``ffn_down_exps.scale``, ``layer_scalar`` -> ``layer_output_scale.weight``; the generated ``rope_freqs``
  (1 for rotated pairs, 1e30 for the others); no norm shift; tied head (no ``output``). The converter
  would also drop embedding rows past the tokenizer's size; the tiny tokenizer is smaller than the tiny
  model's vocabulary, so the rows are kept to compare logits column for column.
Tokenizer: ``tokenizer.ggml.*`` from the tiny tokenizer directory with gguf's own ``SpecialVocab``
(merges, special ids, add_bos, chat template); Qwen as ``gpt2`` / pre ``qwen35`` padded with [PAD] tokens
to the model's vocabulary like ``_set_vocab_gpt2``; Gemma as ``gemma4`` from gguf's ``LlamaHfVocab``
(tokens, scores, byte tokens), its added special tokens typed CONTROL as the published vocabulary's are.

``gguf-nvfp4`` (Gemma): llama.cpp's conversion of a ModelOpt NVFP4 export of the experts
(``_generate_nvfp4_tensors``, ``_repack_nvfp4``): the experts quantized by ModelOpt's
``NVFP4QTensor.quantize`` (gate/up sharing ``weight_scale_2`` per expert), repacked into GGUF NVFP4
blocks (imp_core.quant's ``hf_nvfp4_to_gguf_blocks``), ``weight_scale_2`` stacked into the ``.scale``
tensors and ``router.per_expert_scale`` FOLDED into ``ffn_down_exps.scale`` (Gemma4Model's override),
so the file has no per-expert-scale tensor of its own; the other weights BF16 as in the source.

Types: ``gguf-q8_0`` as ``--outtype q8_0`` (every 2-D weight Q8_0; norms, 1-D tensors, routers and the
conv F32); ``gguf-q4_k_m`` as llama-quantize Q4_K_M (llama-quant.cpp; docs/formats.md, "GGUF block types"): Q4_K default,
Q6_K for the head (or the tied embedding), for attn_v/attn_qkv on ``use_more_bits`` of their count and
for ffn_down* on ``use_more_bits`` layers; row lengths that are not a multiple of 256 fall back per
tensor (Q4_K -> Q5_0, Q6_K -> Q8_0), as llama.cpp does; with 6 experts, llama-quant's n_expert == 8
special cases (attn_v Q8_0, attn_output Q5_K) do not apply. Block bytes: gguf-py's quantizer for Q8_0 / Q5_0,
imp_core.quant's encoders for K-quants; reference = gguf-py's ``dequantize`` of the same
bytes, with the layout transforms undone by the inverse functions below.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from tests.format_factory import use_more_bits

ROOT = "model.language_model."
ARCH = {"qwen36": "qwen35moe", "qwen36-dense": "qwen35", "gemma4": "gemma4"}
NOT_TEXT = ("model.visual.", "model.vision_tower.", "model.embed_vision.", "model.audio_tower.")
FORCED_F32 = ("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight", "ssm_conv1d.weight")
FALLBACK = {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}


# -- converter transforms (llama.cpp) and their inverses ----------------------------------------------
def reorder_v_heads(t: torch.Tensor, dim: int, num_k: int, per_k: int, head_dim: int) -> torch.Tensor:
    """llama.cpp ``_reorder_v_heads``: grouped [k, v, d] -> tiled [v, k, d] along ``dim``."""
    shape = list(t.shape)
    dim = dim % len(shape)
    t = t.reshape(*shape[:dim], num_k, per_k, head_dim, *shape[dim + 1:])
    return t.transpose(dim, dim + 1).contiguous().reshape(shape)


def unorder_v_heads(t: torch.Tensor, dim: int, num_k: int, per_k: int, head_dim: int) -> torch.Tensor:
    """The inverse: tiled [v, k, d] -> grouped [k, v, d]."""
    shape = list(t.shape)
    dim = dim % len(shape)
    t = t.reshape(*shape[:dim], per_k, num_k, head_dim, *shape[dim + 1:])
    return t.transpose(dim, dim + 1).contiguous().reshape(shape)


class QwenLayout:
    """The converter's Qwen3.5 transforms on HF tensors, and their inverses on dequantised ones."""

    def __init__(self, cfg: dict) -> None:
        self.hk, self.hv = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
        self.dk, self.dv = cfg["linear_key_head_dim"], cfg["linear_value_head_dim"]
        self.qk = 2 * self.hk * self.dk

    def _v(self, fn, t: torch.Tensor, dim: int, head_dim: int) -> torch.Tensor:
        return fn(t, dim, self.hk, self.hv // self.hk, head_dim)

    def forward(self, leaf: str, w: torch.Tensor) -> torch.Tensor:
        return self._apply(reorder_v_heads, leaf, w, forward=True)

    def inverse(self, leaf: str, w: torch.Tensor) -> torch.Tensor:
        return self._apply(unorder_v_heads, leaf, w, forward=False)

    def _apply(self, fn, leaf: str, w: torch.Tensor, *, forward: bool) -> torch.Tensor:
        if leaf in ("linear_attn.in_proj_qkv.weight", "linear_attn.conv1d.weight"):
            head, tail = w[:self.qk], w[self.qk:]
            return torch.cat((head, self._v(fn, tail, 0, self.dv)))
        if leaf == "linear_attn.in_proj_z.weight":
            return self._v(fn, w, 0, self.dv)
        if leaf in ("linear_attn.in_proj_a.weight", "linear_attn.in_proj_b.weight"):
            return self._v(fn, w, 0, 1)
        if leaf in ("linear_attn.A_log", "linear_attn.dt_bias"):
            return self._v(fn, w.unsqueeze(-1), 0, 1).squeeze(-1)
        if leaf == "linear_attn.out_proj.weight":
            return self._v(fn, w, 1, self.dv)
        return w


def _is_shifted_norm(hf: str) -> bool:
    return hf.endswith("norm.weight") and not hf.endswith("linear_attn.norm.weight")


def is_qwen(family: str) -> bool:
    return family.startswith("qwen36")


def converted(family: str, cfg: dict, sd: dict) -> list[tuple[str, str, str, torch.Tensor]]:
    """[(gguf name, stored name, text-model name, fp32 tensor as the converter writes it)], in file order."""
    import gguf

    arch = {"qwen35moe": gguf.MODEL_ARCH.QWEN35MOE, "qwen35": gguf.MODEL_ARCH.QWEN35,
            "gemma4": gguf.MODEL_ARCH.GEMMA4}[ARCH[family]]
    tmap = gguf.get_tensor_name_map(arch, cfg["num_hidden_layers"])
    layout = QwenLayout(cfg) if is_qwen(family) else None
    out = []

    def gname(hf: str, suffix: str = ".weight") -> str:
        base = hf.removesuffix(".weight")
        return tmap.get_name(base) + suffix

    for stored, t in sd.items():
        if stored.startswith(NOT_TEXT):
            continue  # vision tower / embed_vision: a separate mmproj GGUF
        hf = "model." + stored[len(ROOT):] if stored.startswith(ROOT) else stored
        leaf = hf.split(".", 3)[3] if hf.startswith("model.layers.") else hf
        w = t.float()
        if is_qwen(family):
            if leaf == "mlp.experts.gate_up_proj":
                inter = w.shape[1] // 2
                out.append((gname(hf.replace("gate_up_proj", "gate_proj")), stored + "#gate", hf, w[:, :inter]))
                out.append((gname(hf.replace("gate_up_proj", "up_proj")), stored + "#up", hf, w[:, inter:]))
                continue
            w = layout.forward(leaf, w)
            if leaf == "linear_attn.A_log":
                out.append((gname(hf, ""), stored, hf, -torch.exp(w)))
            elif leaf == "linear_attn.dt_bias":
                out.append((gname(hf.replace("dt_bias", "dt_proj"), ".bias"), stored, hf, w))
            elif leaf == "linear_attn.conv1d.weight":
                out.append((gname(hf), stored, hf, w.squeeze(1)))
            else:
                out.append((gname(hf), stored, hf, w + 1 if _is_shifted_norm(hf) else w))
        else:
            if leaf == "router.scale":
                out.append((gname(hf.replace("router.scale", "router.proj"), ".scale"), stored, hf, w))
            elif leaf == "router.per_expert_scale":
                out.append((gname(hf.replace("router.per_expert_scale", "experts.down_proj"), ".scale"), stored,
                            hf, w))
            else:
                out.append((gname(hf), stored, hf, w))
    if family == "gemma4":
        full = cfg["rope_parameters"]["full_attention"]
        global_dim = gemma_global(cfg)[0]
        half = global_dim // 2
        n_rot = int(global_dim * full["partial_rotary_factor"] / 2)
        out.insert(0, ("rope_freqs.weight", "", "", torch.tensor([1.0] * n_rot + [1e30] * (half - n_rot))))
    return out


# -- types ----------------------------------------------------------------------------------------
def _attn_v_like(name: str) -> bool:
    return ".attn_v." in name or ".attn_qkv." in name


def qtype_of(fmt: str, name: str, shape: tuple[int, ...], n_layers: int, counters: dict) -> str:
    if len(shape) < 2 or name.endswith(("_norm.weight",) + FORCED_F32) or name == "rope_freqs.weight":
        return "F32"
    if fmt == "gguf-q8_0":
        qtype = "Q8_0"
    elif fmt == "gguf-nvfp4":
        return "BF16"
    else:
        layer = int(name.split(".")[1]) if name.startswith("blk.") else 0
        qtype = "Q4_K"
        if name in ("output.weight",) or (name == "token_embd.weight" and counters.get("tied")):
            qtype = "Q6_K"
        elif _attn_v_like(name):
            qtype = "Q6_K" if use_more_bits(counters["attn_v"], counters["n_attn_v"]) else "Q4_K"
            counters["attn_v"] += 1
        elif ".ffn_down" in name:
            qtype = "Q6_K" if use_more_bits(layer, n_layers) else "Q4_K"
    block = 32 if qtype == "Q8_0" else 256
    if shape[-1] % block:
        qtype = FALLBACK.get(qtype, qtype)
    return qtype if shape[-1] % 32 == 0 else "F16"


# -- metadata -------------------------------------------------------------------------------------
def _qwen_metadata(w, cfg: dict) -> None:
    rope = cfg["rope_parameters"]
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    if "num_experts" in cfg:
        w.add_expert_count(cfg["num_experts"])
        w.add_expert_used_count(cfg["num_experts_per_tok"])
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
        w.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])
    else:  # the dense qwen35 sibling
        w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_ssm_conv_kernel(cfg["linear_conv_kernel_dim"])
    w.add_ssm_state_size(cfg["linear_key_head_dim"])
    w.add_ssm_group_count(cfg["linear_num_key_heads"])
    w.add_ssm_time_step_rank(cfg["linear_num_value_heads"])
    w.add_ssm_inner_size(cfg["linear_value_head_dim"] * cfg["linear_num_value_heads"])
    w.add_full_attention_interval(cfg.get("full_attention_interval", 4))
    w.add_rope_dimension_count(int(cfg["head_dim"] * rope.get("partial_rotary_factor", 0.25)))
    w.add_rope_dimension_sections([*rope["mrope_section"], 0])


def gemma_global(cfg: dict) -> tuple[int, int]:
    """(global head dim, global kv heads) of a saved Gemma-4 text config (transformers folds them into
    ``per_layer_config``)."""
    full = next(str(i) for i, t in enumerate(cfg["layer_types"]) if t == "full_attention")
    over = (cfg.get("per_layer_config") or {}).get(full) or (cfg.get("per_layer_config") or {}).get(f"{int(full):02d}")
    if over:
        return over["head_dim"], over["num_key_value_heads"]
    return cfg["global_head_dim"], cfg["num_global_key_value_heads"]


def _gemma_metadata(w, cfg: dict) -> None:
    rope = cfg["rope_parameters"]
    swa = [t == "sliding_attention" for t in cfg["layer_types"]]
    global_dim, global_kv = gemma_global(cfg)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv([cfg["num_key_value_heads"] if s else global_kv for s in swa])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_key_length(global_dim)
    w.add_value_length(global_dim)
    w.add_key_length_swa(cfg["head_dim"])
    w.add_value_length_swa(cfg["head_dim"])
    w.add_rope_freq_base(rope["full_attention"]["rope_theta"])
    w.add_rope_freq_base_swa(rope["sliding_attention"]["rope_theta"])
    w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
    w.add_sliding_window(cfg["sliding_window"])
    w.add_shared_kv_layers(cfg["num_kv_shared_layers"])
    w.add_embedding_length_per_layer_input(cfg["hidden_size_per_layer_input"])
    w.add_sliding_window_pattern(swa)
    w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    w.add_expert_count(cfg["num_experts"])
    w.add_expert_used_count(cfg["top_k_experts"])
    w.add_rope_dimension_count(global_dim)
    w.add_rope_dimension_count_swa(cfg["head_dim"])


def _tokenizer_metadata(w, family: str, tok_dir: Path, vocab_size: int) -> None:
    import gguf

    data = json.loads((tok_dir / "tokenizer.json").read_text())
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    if is_qwen(family):
        vocab = data["model"]["vocab"]
        tokens = [f"[PAD{i}]" for i in range(vocab_size)]
        types = [gguf.TokenType.UNUSED] * vocab_size
        for t, i in vocab.items():
            tokens[i], types[i] = t, gguf.TokenType.NORMAL
        for i, t in added.items():
            tokens[i] = t["content"]
            types[i] = gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen35")
        w.add_token_list(tokens)
        w.add_token_types(types)
    else:
        vocab = gguf.LlamaHfVocab(tok_dir)
        tokens, scores, types = [], [], []
        for i, (text, score, toktype) in enumerate(vocab.all_tokens()):
            tokens.append(text)
            scores.append(score)
            types.append(gguf.TokenType.CONTROL if added.get(i, {}).get("special") else toktype)
        w.add_tokenizer_model("gemma4")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
    gguf.SpecialVocab(tok_dir, load_merges=True).add_to_gguf(w, quiet=True)
    if family == "gemma4":
        w.add_add_space_prefix(False)
        w.add_add_bos_token(True)


# -- writer ---------------------------------------------------------------------------------------
def _dense_twin(family: str, cfg: dict, hf: str, stored: torch.Tensor, original: torch.Tensor,
                layout) -> torch.Tensor:
    """The HF tensor the file holds: the converter's transform undone on the dequantised data."""
    leaf = hf.split(".", 3)[3] if hf.startswith("model.layers.") else hf
    if not is_qwen(family):
        return stored
    if leaf == "linear_attn.A_log":
        return original  # the file holds -exp(A_log) in fp32: exactly what transformers computes
    if leaf == "linear_attn.conv1d.weight":
        stored = stored.unsqueeze(1)
    elif _is_shifted_norm(hf):
        stored = stored - 1
    return layout.inverse(leaf, stored)


def nvfp4_experts(cfg: dict, sd: dict) -> dict[str, tuple]:
    """{gguf name: (raw GGUF NVFP4 bytes, .scale [E], .input_scale [E], ModelOpt's fp32 dequant)} of the
    Gemma experts, with per_expert_scale folded into the down projections' scale as llama.cpp does."""
    from imp_core.quant.gguf_fp4 import hf_nvfp4_to_gguf_blocks
    from tests.format_factory import _mo_nvfp4

    out = {}
    for i in range(cfg["num_hidden_layers"]):
        p = f"{ROOT}layers.{i}."
        gate_up, down = sd[p + "experts.gate_up_proj"].float(), sd[p + "experts.down_proj"].float()
        fold = sd[p + "router.per_expert_scale"].float()
        inter = gate_up.shape[1] // 2
        for leaf, w in (("ffn_gate_up_exps", gate_up), ("ffn_down_exps", down)):
            raws, scales, refs = [], [], []
            for e in range(w.shape[0]):
                parts = (w[e, :inter], w[e, inter:]) if leaf == "ffn_gate_up_exps" else (w[e],)
                group = torch.cat([x.flatten() for x in parts])
                quant = [_mo_nvfp4(x, group) for x in parts]
                codes = torch.cat([t["weight"] for t, _ in quant])
                block = torch.cat([t["weight_scale"] for t, _ in quant])
                raws.append(hf_nvfp4_to_gguf_blocks(codes, block))
                scale_2 = quant[0][0]["weight_scale_2"].float()
                scales.append(scale_2 * fold[e] if leaf == "ffn_down_exps" else scale_2)
                refs.append(torch.cat([ref for _, ref in quant]))
            inputs = torch.full((w.shape[0],), 3.0 / 2688)
            out[f"blk.{i}.{leaf}.weight"] = (torch.stack(raws).numpy(), torch.stack(scales), inputs, torch.stack(refs))
    return out


def write_family_gguf(family: str, fmt: str, root: Path, original: Path, cfg: dict, sd: dict
                      ) -> tuple[Path, dict[str, torch.Tensor]]:
    """Write ``root/tiny-<fmt>.gguf`` for ``family``; return (path, dense twin in the original's names)."""
    import gguf

    from imp_core.quant import quantize_gguf

    path = root / f"tiny-{fmt}.gguf"
    root.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, ARCH[family])
    writer.add_name(f"tiny-{family}")
    (_qwen_metadata if is_qwen(family) else _gemma_metadata)(writer, cfg)
    writer.add_file_type({"gguf-q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "gguf-q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M,
                          "gguf-nvfp4": gguf.LlamaFileType.MOSTLY_NVFP4}[fmt])
    _tokenizer_metadata(writer, family, original, cfg["vocab_size"])
    tensors = converted(family, cfg, sd)
    n_layers = cfg["num_hidden_layers"]
    counters = {"attn_v": 0, "n_attn_v": sum(_attn_v_like(t[0]) for t in tensors),
                "tied": not any(t[0] == "output.weight" for t in tensors)}
    layout = QwenLayout(cfg) if is_qwen(family) else None
    dense: dict[str, torch.Tensor] = {}
    halves: dict[str, dict[str, torch.Tensor]] = {}
    experts = nvfp4_experts(cfg, sd) if fmt == "gguf-nvfp4" else {}
    for gname, stored, hf, w in tensors:
        if experts and gname.endswith("ffn_down_exps.scale"):
            continue  # router.per_expert_scale: folded into the NVFP4 down experts' scale
        qtype = qtype_of(fmt, gname, tuple(w.shape), n_layers, counters)
        if gname in experts:
            raw, scale, inputs, back = experts[gname]
            writer.add_tensor(gname, raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType.NVFP4)
            writer.add_tensor(gname.replace(".weight", ".scale"), scale.numpy().astype(np.float32))
            writer.add_tensor(gname.replace(".weight", ".input_scale"), inputs.numpy().astype(np.float32))
        elif qtype == "F32":
            writer.add_tensor(gname, w.numpy().astype(np.float32))
            back = w
        else:
            raw = quantize_gguf(w, qtype)
            writer.add_tensor(gname, raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType[qtype])
            back = torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype]).copy()).float()
        if not stored:
            continue
        if "#" in stored:  # one half of the fused experts
            name, half = stored.split("#")
            halves.setdefault(name, {})[half] = back
            continue
        dense[stored] = _dense_twin(family, cfg, hf, back, sd[stored].float(), layout)
    for name, parts in halves.items():
        dense[name] = torch.cat((parts["gate"], parts["up"]), dim=1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, {**{k: v for k, v in sd.items()}, **dense}
