"""Quantized tiny Mistral checkpoints made by the real producers, plus their dequantised twins.

Every fixture starts from a tiny random BF16 Mistral written by transformers (tests/mistral_factory)
and yields three directories/files:
- ``path``: the quantized checkpoint as the producer lays it out;
- ``dense``: the same model with every quantized weight replaced by the PRODUCER's own
  dequantisation (fp32), loadable by transformers: the parity oracle;
- ``original``: the BF16 original, for the quantisation error.

Formats and what writes them:
- ``ct-nvfp4``: compressed-tensors 0.20.0 (``generate_gparam``, ``calculate_qparams``,
  ``NVFP4PackedCompressor.compress``; config via ``QuantizationConfig``), q/k/v and gate/up
  sharing one global scale as llm-compressor links them; reference = CT's ``dequantize``.
- ``ct-fp8``: compressed-tensors ``FP8_DYNAMIC`` (per-channel) with ``FloatQuantizationCompressor``.
- ``modelopt-nvfp4``: nvidia-modelopt 0.47.0 ``NVFP4QTensor.quantize`` (runs on CPU) with the
  fused groups' shared ``weight_scale_2`` (``get_weights_scaling_factor_2`` of the group),
  ``hf_quant_config.json`` + ``convert_hf_quant_config_format`` for config.json.
- ``modelopt-mixed``: MIXED_PRECISION shaped like nvidia/Qwen3.6-35B-A3B-NVFP4 (docs/formats.md, "Mixed-precision checkpoints"):
  MLP and lm_head W4A16_NVFP4, attention FP8 per-tensor (``FP8QTensor.quantize``) with
  input scales, FP8 KV cache declared with k/v scales.
- ``fp8-block``: HF/DeepSeek ``quant_method: fp8`` with 128x128 ``weight_scale_inv`` (bytes and
  scales from compressed-tensors' ``FP8_BLOCK`` preset, which is the same formula); reference =
  transformers' ``_dequantize_fp8_weight``.
- ``gguf-q8_0`` (arch ``llama``, untied) and ``gguf-q4_k_m`` (arch ``mistral3``, tied head):
  gguf's ``GGUFWriter`` with the converter's names (gguf's own ``get_tensor_name_map``),
  ``llama.*``/``mistral3.*`` keys, the Q/K row permutation of ``LlamaModel.permute`` and the
  tokenizer as ``tokenizer.ggml.*`` (gpt2 / tekken); Q8_0 bytes by gguf-py's quantizer, K-quant
  blocks by imp_core.quant's K-quant encoders; reference = gguf-py's ``dequantize``.
  The Q4_K_M-like mix follows llama-quant.cpp: norms F32, attn_v / ffn_down Q6_K on
  ``use_more_bits`` layers else Q4_K, the (tied) token embedding Q6_K, the rest Q4_K.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tests.mistral_factory import write_checkpoint

TEXT = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
            head_dim=64, num_hidden_layers=2)
FORMATS = ("ct-nvfp4", "ct-fp8", "modelopt-nvfp4", "modelopt-mixed", "fp8-block", "gguf-q8_0", "gguf-q4_k_m")
LAYOUT = {"fp8-block": "mistral", "gguf-q8_0": "mistral", "gguf-q4_k_m": "mistral"}
PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
FUSED = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj"))
VISION_IGNORE = ["re:.*vision_tower.*", "re:.*multi_modal_projector.*"]


@dataclass
class Fixture:
    fmt: str
    path: Path
    dense: Path
    original: Path
    layout: str  # transformers class of dense/original: "mistral3" or "mistral"


def _quiet():
    warnings.simplefilter("ignore")


def _linear_modules(sd: dict, layout: str) -> list[str]:
    root = "language_model.model.layers" if layout == "mistral3" else "model.layers"
    n = TEXT["num_hidden_layers"]
    return [f"{root}.{i}.{p}" for i in range(n) for p in PROJ]


def _group_of(module: str) -> tuple[str, ...]:
    prefix, _, leaf = module.rpartition(".")
    owner = prefix.rpartition(".")[2]
    for group in FUSED:
        if f"{owner}.{leaf}" in group:
            base = prefix.rpartition(".")[0]
            return tuple(f"{base}.{m}" for m in group)
    return (module,)


def _write_dir(dest: Path, src: Path, tensors: dict, quant_config: dict | None = None,
               extra_files: dict | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name not in ("model.safetensors", "config.json"):
            shutil.copy(f, dest / f.name)
    cfg = json.loads((src / "config.json").read_text())
    if quant_config is not None:
        cfg["quantization_config"] = quant_config
    (dest / "config.json").write_text(json.dumps(cfg, indent=1))
    for name, content in (extra_files or {}).items():
        (dest / name).write_text(json.dumps(content, indent=1))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dest / "model.safetensors"))
    return dest


# -- compressed-tensors -----------------------------------------------------------------------
def _ct_nvfp4(sd: dict, modules: list[str]) -> tuple[dict, dict, dict]:
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
    from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme
    from compressed_tensors.quantization.lifecycle.forward import dequantize
    from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam

    scheme = preset_name_to_scheme("NVFP4", ["Linear"])
    q, dense = dict(sd), dict(sd)
    for m in modules:
        w = sd[m + ".weight"].float()
        group = torch.cat([sd[g + ".weight"].float().flatten() for g in _group_of(m)])
        gscale = generate_gparam(group.min(), group.max())
        blocks = w.unflatten(-1, (w.shape[-1] // 16, 16))
        scale, _ = calculate_qparams(blocks.amin(-1), blocks.amax(-1), scheme.weights, global_scale=gscale)
        packed = NVFP4PackedCompressor.compress({"weight": w, "weight_scale": scale, "weight_global_scale": gscale},
                                                scheme)
        del q[m + ".weight"]
        q.update({f"{m}.{k}": v for k, v in packed.items()})
        q[m + ".input_global_scale"] = torch.tensor([448.0 * 6 / 3.5])
        dense[m + ".weight"] = dequantize(
            x_q=unpack_fp4_from_uint8(packed["weight_packed"], *w.shape, dtype=torch.float32),
            scale=packed["weight_scale"].float(), args=scheme.weights, global_scale=packed["weight_global_scale"],
            dtype=torch.float32)
    qc = QuantizationConfig(config_groups={"group_0": scheme}, format="nvfp4-pack-quantized",
                            quantization_status="compressed", ignore=["language_model.lm_head", *VISION_IGNORE])
    return q, dense, qc.model_dump(mode="json", exclude_none=True)


def _ct_fp8(sd: dict, modules: list[str]) -> tuple[dict, dict, dict]:
    from compressed_tensors.compressors.naive_quantized.base import FloatQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme
    from compressed_tensors.quantization.utils import calculate_qparams

    scheme = preset_name_to_scheme("FP8_DYNAMIC", ["Linear"])
    q, dense = dict(sd), dict(sd)
    for m in modules:
        w = sd[m + ".weight"].float()
        scale, _ = calculate_qparams(w.amin(1, keepdim=True), w.amax(1, keepdim=True), scheme.weights)
        packed = FloatQuantizationCompressor.compress({"weight": w, "weight_scale": scale}, scheme)
        q[m + ".weight"], q[m + ".weight_scale"] = packed["weight"], packed["weight_scale"]
        dense[m + ".weight"] = FloatQuantizationCompressor.decompress(dict(packed), scheme)["weight"].float()
    qc = QuantizationConfig(config_groups={"group_0": scheme}, format="float-quantized",
                            quantization_status="compressed", ignore=["language_model.lm_head", *VISION_IGNORE])
    return q, dense, qc.model_dump(mode="json", exclude_none=True)


# -- ModelOpt ---------------------------------------------------------------------------------
def _mo_nvfp4(w: torch.Tensor, group: torch.Tensor) -> tuple[dict, torch.Tensor]:
    with warnings.catch_warnings():
        _quiet()
        from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor
    scale_2 = NVFP4QTensor.get_weights_scaling_factor_2(group)
    qt, block, scale_2 = NVFP4QTensor.quantize(w, 16, weights_scaling_factor_2=scale_2)
    ref = qt.dequantize(dtype=torch.float32, scale=block, double_scale=scale_2, block_sizes={-1: 16})
    return {"weight": qt._quantized_data, "weight_scale": block, "weight_scale_2": scale_2.reshape(())}, ref


def _mo_fp8(w: torch.Tensor) -> tuple[dict, torch.Tensor]:
    with warnings.catch_warnings():
        _quiet()
        from modelopt.torch.quantization.qtensor.fp8_tensor import FP8QTensor
    qt, scale = FP8QTensor.quantize(w)
    ref = qt.dequantize(dtype=torch.float32, scale=scale)
    return {"weight": qt._quantized_data, "weight_scale": scale.reshape(()).float()}, ref


def _modelopt(sd: dict, modules: list[str], mixed: bool) -> tuple[dict, dict, dict, dict]:
    with warnings.catch_warnings():
        _quiet()
        from modelopt.torch.export.convert_hf_config import convert_hf_quant_config_format
    q, dense = dict(sd), dict(sd)
    layers: dict[str, dict] = {}
    targets = [*modules, "language_model.lm_head"] if mixed else modules
    for m in targets:
        w = sd[m + ".weight"].float()
        if mixed and "self_attn" in m:
            tensors, ref = _mo_fp8(w)
            tensors["input_scale"] = torch.tensor(2.5 / 448)
            layers[m] = {"quant_algo": "FP8"}
            if m.endswith(("k_proj", "v_proj")):
                tensors[m[-6] + "_scale"] = torch.tensor(1.5 / 448)  # k_scale / v_scale (FP8 KV cache)
        else:
            group = torch.cat([sd[g + ".weight"].float().flatten() for g in _group_of(m)])
            tensors, ref = _mo_nvfp4(w, group)
            if mixed:
                layers[m] = {"quant_algo": "W4A16_NVFP4", "group_size": 16}
            else:
                tensors["input_scale"] = torch.tensor(3.0 / 2688)
        q.update({f"{m}.{k}": v for k, v in tensors.items()})
        dense[m + ".weight"] = ref
    quant = {"quant_algo": "MIXED_PRECISION" if mixed else "NVFP4", "kv_cache_quant_algo": "FP8" if mixed else None,
             "group_size": 16}
    if mixed:
        quant["quantized_layers"] = layers
        quant["exclude_modules"] = ["vision_tower*", "multi_modal_projector*"]
    else:
        quant["exclude_modules"] = ["language_model.lm_head", "vision_tower*", "multi_modal_projector*"]
    hf_quant = {"producer": {"name": "modelopt", "version": "0.47.0"}, "quantization": quant}
    return q, dense, convert_hf_quant_config_format(hf_quant), hf_quant


# -- HF block FP8 -----------------------------------------------------------------------------
def _fp8_block(sd: dict, modules: list[str]) -> tuple[dict, dict, dict]:
    from compressed_tensors.compressors.naive_quantized.base import FloatQuantizationCompressor
    from compressed_tensors.quantization import preset_name_to_scheme
    from compressed_tensors.quantization.utils import calculate_qparams
    from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight

    scheme = preset_name_to_scheme("FP8_BLOCK", ["Linear"])
    q, dense = dict(sd), dict(sd)
    for m in modules:
        w = sd[m + ".weight"].float()
        n, k = w.shape
        tiles = w.reshape(n // 128, 128, k // 128, 128)
        scale, _ = calculate_qparams(tiles.amin((1, 3)), tiles.amax((1, 3)), scheme.weights)
        packed = FloatQuantizationCompressor.compress({"weight": w, "weight_scale": scale}, scheme)
        q[m + ".weight"], q[m + ".weight_scale_inv"] = packed["weight"], packed["weight_scale"].float()
        dense[m + ".weight"] = _dequantize_fp8_weight(packed["weight"], q[m + ".weight_scale_inv"], [128, 128],
                                                      torch.float32)
    qc = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128],
          "modules_to_not_convert": ["lm_head"]}
    return q, dense, qc


# -- GGUF -------------------------------------------------------------------------------------
def use_more_bits(i: int, n: int) -> bool:
    """llama-quant.cpp's rule (integer arithmetic)."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def q4_k_m_type(gguf_name: str, n_layers: int) -> str:
    if gguf_name.endswith("_norm.weight"):
        return "F32"
    if gguf_name in ("output.weight", "token_embd.weight"):  # token_embd only reaches here when tied
        return "Q6_K"
    layer = int(gguf_name.split(".")[1]) if gguf_name.startswith("blk.") else 0
    if ".attn_v." in gguf_name or ".ffn_down." in gguf_name:
        return "Q6_K" if use_more_bits(layer, n_layers) else "Q4_K"
    return "Q4_K"


def llama_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp ``LlamaModel.permute`` (convert_hf_to_gguf.py)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tokenizer_metadata(writer, tok_dir: Path) -> None:
    import gguf

    data = json.loads((tok_dir / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    size = max([*vocab.values(), *added]) + 1
    tokens = [""] * size
    for t, i in vocab.items():
        tokens[i] = t
    types = [gguf.TokenType.NORMAL] * size
    for i, t in added.items():
        tokens[i] = t["content"]
        types[i] = gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("tekken")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template((tok_dir / "chat_template.jinja").read_text())


def write_gguf(dest: Path, sd: dict, cfg: dict, arch: str, qtype_of, tok_dir: Path, *,
               split_max_tensors: int = 0) -> tuple[Path, dict]:
    """Write the HF state dict ``sd`` as a GGUF like convert_hf_to_gguf.py; return (path, dense)."""
    import gguf

    from imp_core.quant import quantize_gguf

    n_layers = cfg["num_hidden_layers"]
    arch_enum = {"llama": gguf.MODEL_ARCH.LLAMA, "mistral3": gguf.MODEL_ARCH.MISTRAL3}[arch]
    tmap = gguf.get_tensor_name_map(arch_enum, n_layers)
    writer = gguf.GGUFWriter(dest, arch, split_max_tensors=split_max_tensors)
    writer.add_name("tiny-mistral")
    writer.add_block_count(n_layers)
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_key_length(cfg["head_dim"])
    writer.add_value_length(cfg["head_dim"])
    writer.add_rope_dimension_count(cfg["head_dim"])
    writer.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if "Q8_0" == qtype_of("blk.0.attn_q.weight", n_layers)
                         else gguf.LlamaFileType.MOSTLY_Q4_K_M)
    _tokenizer_metadata(writer, tok_dir)
    dense = {}
    for name, t in sd.items():
        w = t.float()
        gname = tmap.get_name(name.removesuffix(".weight"), try_suffixes=(".weight",)) + ".weight"
        qtype = qtype_of(gname, n_layers)
        stored = w
        if name.endswith("q_proj.weight"):
            stored = llama_permute(w, cfg["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            stored = llama_permute(w, cfg["num_key_value_heads"])
        if qtype == "F32":
            writer.add_tensor(gname, stored.numpy().astype(np.float32))
            dense[name] = w
            continue
        raw = quantize_gguf(stored, qtype)
        writer.add_tensor(gname, raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType[qtype])
        # the reference dequantises the SAME rows in HF order: blocks never cross rows, so
        # quantize(permute(W)) == permute(quantize(W)) and gguf-py decodes them independently
        dense[name] = torch.from_numpy(gguf.quants.dequantize(quantize_gguf(w, qtype),
                                                              gguf.GGMLQuantizationType[qtype])).float()
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest, dense


def _gguf(fmt: str, root: Path, original: Path, sd: dict) -> tuple[Path, dict]:
    cfg = json.loads((original / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    if fmt == "gguf-q8_0":
        return write_gguf(root / "tiny-q8_0.gguf", sd, cfg, "llama", lambda g, n: "F32" if g.endswith("_norm.weight")
                          else "Q8_0", original)
    return write_gguf(root / "tiny-q4_k_m.gguf", sd, cfg, "mistral3", q4_k_m_type, original)


# -- entry point ------------------------------------------------------------------------------
def make_fixture(fmt: str, root: Path, *, seed: int = 0) -> Fixture:
    """Write ``fmt`` (one of FORMATS) under ``root``; see the module docstring."""
    layout = LAYOUT.get(fmt, "mistral3")
    tied = fmt == "gguf-q4_k_m"
    original = write_checkpoint(root / "original", layout, seed=seed, dtype=torch.bfloat16, **TEXT,
                                tie_word_embeddings=tied)
    if tied:  # transformers keeps tie_word_embeddings at the top level for the parity load
        cfg = json.loads((original / "config.json").read_text())
        cfg["tie_word_embeddings"] = True
        (original / "config.json").write_text(json.dumps(cfg, indent=1))
    sd = load_file(str(original / "model.safetensors"))
    modules = _linear_modules(sd, layout)
    extra = None
    if fmt.startswith("gguf"):
        if tied:
            sd.pop("lm_head.weight", None)
        path, dense = _gguf(fmt, root, original, sd)
    else:
        if fmt == "ct-nvfp4":
            q, dense, qc = _ct_nvfp4(sd, modules)
        elif fmt == "ct-fp8":
            q, dense, qc = _ct_fp8(sd, modules)
        elif fmt in ("modelopt-nvfp4", "modelopt-mixed"):
            q, dense, qc, hf_quant = _modelopt(sd, modules, mixed=fmt == "modelopt-mixed")
            extra = {"hf_quant_config.json": hf_quant}
        elif fmt == "fp8-block":
            q, dense, qc = _fp8_block(sd, modules)
        else:
            raise ValueError(f"unknown fixture format {fmt!r}")
        path = _write_dir(root / "quantized", original, q, qc, extra)
    dense_dir = _write_dir(root / "dense", original, {k: v.float() for k, v in dense.items()})
    return Fixture(fmt, path, dense_dir, original, layout)


_CACHE: dict[str, Fixture] = {}
_ROOT: list[Path] = []


def cached_fixture(fmt: str) -> Fixture:
    """``make_fixture`` once per test process (fixtures are read-only to the tests)."""
    if fmt not in _CACHE:
        import atexit
        import tempfile

        if not _ROOT:
            _ROOT.append(Path(tempfile.mkdtemp(prefix="imp-formats-")))
            atexit.register(shutil.rmtree, _ROOT[0], True)
        _CACHE[fmt] = make_fixture(fmt, _ROOT[0] / fmt)
    return _CACHE[fmt]
