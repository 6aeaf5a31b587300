"""GGUF: reader (split files, bad input), metadata -> config, Q/K unpermute, tied head, tokenizer."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from imp_core.checkpoint.gguf_names import llama_unpermute, permute_rows
from imp_core.checkpoint.open import open_checkpoint
from imp_core.errors import CheckpointError, ImpError, QuantError
from imp_core.text.gguf_tokenizer import tokenizer_from_gguf
from imp_core.quant import QTensor, quantize_gguf
from imp_core.quant.detect.dispatch import detect_quant
from imp_core.text.tokenizer import Tokenizer
from tests.format_factory import cached_fixture, llama_permute, write_gguf
from tests.test_formats_parity import session


def _one_line(exc_info, *fragments):
    msg = str(exc_info.value)
    assert "\n" not in msg and all(f in msg for f in fragments), msg


# -- reader -------------------------------------------------------------------------------------
def test_reader_types_shapes_and_metadata():
    ck = open_checkpoint(cached_fixture("gguf-q4_k_m").path)
    assert ck.format == "gguf" and ck.gguf_architecture == "mistral3"
    q = ck.tensors["blk.0.attn_q.weight"]
    assert (q.dtype, q.shape, q.nbytes) == ("Q4_K", (256, 256), 256 * 144)
    assert ck.tensors["blk.1.attn_v.weight"].dtype == "Q6_K" and ck.tensors["blk.0.attn_v.weight"].dtype == "Q4_K"
    assert ck.tensors["output_norm.weight"].dtype == "F32" and "output.weight" not in ck.tensors
    raw = ck.read("blk.1.ffn_down.weight")  # Q6_K on the use_more_bits layer
    assert raw.dtype == torch.uint8 and tuple(raw.shape) == (256, 512 // 256 * 210)
    assert ck.read("blk.0.attn_norm.weight").dtype == torch.float32
    assert ck.metadata["mistral3.block_count"] == 2 and ck.metadata["tokenizer.ggml.pre"] == "tekken"


def test_split_files_load_like_the_single_file(tmp_path):
    fx = cached_fixture("gguf-q8_0")
    sd = load_file(str(fx.original / "model.safetensors"))
    cfg = json.loads((fx.original / "config.json").read_text())
    write_gguf(tmp_path / "split.gguf", sd, cfg, "llama",
               lambda g, n: "F32" if g.endswith("_norm.weight") else "Q8_0", fx.original, split_max_tensors=8)
    parts = sorted(tmp_path.glob("split-*-of-*.gguf"))
    assert len(parts) == 3, parts
    whole = open_checkpoint(fx.path)
    split = open_checkpoint(parts[1])  # any part opens the whole set
    assert split.path == parts[0] and set(split.tensors) == set(whole.tensors)
    assert {t.file for t in split.tensors.values()} == set(parts)
    for name in ("blk.1.ffn_up.weight", "output.weight", "token_embd.weight"):
        assert torch.equal(split.read(name), whole.read(name))
    ids = torch.randint(3, 512, (1, 10), generator=torch.Generator().manual_seed(0))
    a, b = session(fx.path).model, session(parts[0]).model
    assert torch.equal(a.forward(ids, torch.arange(10), a.new_cache(1, 16)),
                       b.forward(ids, torch.arange(10), b.new_cache(1, 16)))
    parts[2].unlink()
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(parts[0])
    _one_line(info, "split GGUF is missing part(s)", parts[2].name)


def test_truncated_and_bad_magic(tmp_path):
    src = cached_fixture("gguf-q8_0").path
    data = src.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(cut)
    _one_line(info, str(cut), "truncated")
    tiny = tmp_path / "tiny.gguf"
    tiny.write_bytes(data[:10])
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(tiny)
    _one_line(info, "truncated GGUF file")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + data[4:])
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(bad)
    _one_line(info, str(bad), "not a GGUF file")


def _tiny_gguf(path, tensors):
    w = gguf.GGUFWriter(path, "llama")
    for name, data, qtype, byte_shape in tensors:
        w.add_tensor(name, data, raw_shape=byte_shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_tensor_byte_size_not_matching_type_and_shape(tmp_path):
    q8 = gguf.GGMLQuantizationType.Q8_0
    one_block = quantize_gguf(torch.randn(1, 32), "Q8_0")  # 34 bytes
    # declares 2 rows of 32 (68 bytes) but only one block's bytes precede the next tensor
    path = _tiny_gguf(tmp_path / "short.gguf", [("a.weight", one_block, q8, (2, 34)),
                                                 ("b.weight", one_block, q8, (1, 34))])
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(path)
    _one_line(info, "'a.weight' (Q8_0, shape [2, 32], 68 bytes) overlaps 'b.weight'",
              "does not match its type and shape")


def test_row_not_multiple_of_block_and_unsupported_type(tmp_path):
    iq = gguf.GGMLQuantizationType.IQ2_XXS
    path = _tiny_gguf(tmp_path / "iq.gguf", [("blk.0.attn_q.weight", np.zeros((2, 66), np.uint8), iq, (2, 66))])
    with pytest.raises(QuantError) as info:
        detect_quant(open_checkpoint(path))
    _one_line(info, "'blk.0.attn_q.weight' has GGUF type IQ2_XXS", "cannot dequantize")
    # a writer bug: Q4_K row of 100 elements (not a multiple of 256), patched into the tensor info
    path = _tiny_gguf(tmp_path / "row.gguf", [("x.weight", np.zeros((1, 144), np.uint8),
                                                gguf.GGMLQuantizationType.Q4_K, (1, 144))])
    raw = bytearray(path.read_bytes())
    at = raw.find(b"x.weight") + len(b"x.weight") + 4  # name, n_dims u32, then ne[0] u64
    assert int.from_bytes(raw[at:at + 8], "little") == 256
    raw[at:at + 8] = (100).to_bytes(8, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(path)
    _one_line(info, "row.gguf", "Q4_K has row length 100, not a multiple of its block size 256")


def test_cli_reports_a_truncated_gguf_in_one_line(tmp_path):
    from tests.cli_util import assert_one_line_error, run_imp

    data = cached_fixture("gguf-q8_0").path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 1000])
    assert_one_line_error(run_imp("info", "--model", str(cut)), "truncated")


# -- names, config, transforms -----------------------------------------------------------------
def test_config_from_metadata_matches_config_json():
    from imp_mistral.family import MistralFamily

    fx = cached_fixture("gguf-q8_0")
    cfg = session(fx.path).inspection.config
    hf = MistralFamily().config_from_dict(json.loads((fx.original / "config.json").read_text()))
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "max_position_embeddings"):
        assert getattr(cfg, key) == pytest.approx(getattr(hf, key)), key
    assert cfg.architecture == "LlamaForCausalLM (GGUF llama)"


def test_unpermute_inverts_the_converter_on_dense_and_packed_rows():
    w = torch.randn(4 * 64, 256)
    assert torch.equal(llama_unpermute(4)(llama_permute(w, 4)), w)
    for qtype in ("Q8_0", "Q4_K", "Q6_K"):
        stored = torch.from_numpy(quantize_gguf(llama_permute(w, 4), qtype))
        qt = QTensor(f"gguf:{qtype}", stored, (256, 256))
        back = llama_unpermute(4)(qt)
        assert isinstance(back, QTensor)
        ref = QTensor(f"gguf:{qtype}", torch.from_numpy(quantize_gguf(w, qtype)), (256, 256)).dequantize()
        assert torch.equal(back.dequantize(), ref)
    assert not torch.equal(permute_rows(w, torch.arange(256).flip(0)), w)


def test_tied_head_uses_the_quantized_embedding():
    fx = cached_fixture("gguf-q4_k_m")
    model = session(fx.path).model
    assert model.lm_head.weight is model.embed.weight
    dense = load_file(str(fx.dense / "model.safetensors"))
    assert torch.equal(model.embed.weight, dense["model.embed_tokens.weight"])


# -- tokenizer ----------------------------------------------------------------------------------
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Café, naïve — 日本語 42 (a+b)*c",
         "[INST]Hello[/INST] world</s>", "  leading spaces\n\nand\ttabs", ""]


def test_tokenizer_from_metadata_matches_the_hf_tokenizer():
    fx = cached_fixture("gguf-q8_0")
    ours = tokenizer_from_gguf(open_checkpoint(fx.path).metadata, source="gguf")
    ref = Tokenizer.from_dir(fx.original)
    for text in TEXTS:
        assert ours.encode(text) == ref.encode(text), text
        assert ours.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False)
        ids = ref.encode(text)
        assert ours.decode(ids) == ref.decode(ids)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Tell me about Paris."}]
    assert ours.encode_chat(msgs) == ref.encode_chat(msgs)
    assert ours.bos_token == "<s>" and 2 in ours.eos_token_ids
    assert ours.special_token_ids == ref.special_token_ids


def test_tokenizer_from_metadata_refuses_unknown_pre_and_model():
    meta = dict(open_checkpoint(cached_fixture("gguf-q8_0").path).metadata)
    meta["tokenizer.ggml.pre"] = "mystery"
    with pytest.raises(CheckpointError) as info:
        tokenizer_from_gguf(meta, source="x.gguf")
    _one_line(info, "tokenizer.ggml.pre 'mystery'")
    meta["tokenizer.ggml.model"] = "rwkv"
    with pytest.raises(ImpError) as info:
        tokenizer_from_gguf(meta, source="x.gguf")
    _one_line(info, "tokenizer.ggml.model 'rwkv'")


def test_spm_style_vocab_builds_a_byte_fallback_tokenizer():
    pieces = ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)], "▁", "a", "b", "▁a", "ab", "▁ab"]
    types = [2, 3, 3, *[6] * 256, 1, 1, 1, 1, 1, 1]
    scores = [0.0] * 259 + [-5.0, -6.0, -6.5, -1.0, -2.0, -0.5]
    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": pieces, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.scores": scores, "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.add_bos_token": True}
    tok = tokenizer_from_gguf(meta)
    ids = tok.encode("ab ab c")
    assert ids[0] == 1 and pieces[ids[1]] == "▁ab" and pieces[ids[2]] == "▁ab"
    assert pieces[ids[3]] == "▁" and pieces[ids[4]] == "<0x63>"  # 'c' by byte fallback
    assert tok.decode(ids) == "ab ab c"
