"""Quant detection on the producers' fixtures, and every refusal as a one-line QuantError naming the tensor."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from imp_core.checkpoint.open import open_checkpoint
from imp_core.errors import ImpError, QuantError
from imp_core.quant.detect.dispatch import detect_quant
from tests.format_factory import cached_fixture

EXPECTED = {  # format -> (producer, {format: count})
    "ct-nvfp4": ("compressed-tensors", {"nvfp4": 14}),
    "ct-fp8": ("compressed-tensors", {"fp8": 14}),
    "modelopt-nvfp4": ("modelopt", {"nvfp4": 14}),
    "modelopt-mixed": ("modelopt", {"nvfp4": 7, "fp8": 8}),
    "fp8-block": ("fp8", {"fp8": 14}),
    "gguf-q8_0": ("gguf", {"gguf:Q8_0": 16}),
    "gguf-q4_k_m": ("gguf", {"gguf:Q4_K": 12, "gguf:Q6_K": 3}),
}


@pytest.mark.parametrize("fmt", list(EXPECTED))
def test_detects_producer_formats_and_sidecars(fmt):
    plan = detect_quant(open_checkpoint(cached_fixture(fmt).path))
    producer, counts = EXPECTED[fmt]
    found: dict[str, int] = {}
    for t in plan.tensors.values():
        found[t.format] = found.get(t.format, 0) + 1
    assert plan.producer == producer and found == counts, (plan.producer, found)


def test_plan_details_per_producer():
    ct = detect_quant(open_checkpoint(cached_fixture("ct-nvfp4").path))
    q = ct.tensors["language_model.model.layers.0.self_attn.q_proj.weight"]
    assert q.stored == "language_model.model.layers.0.self_attn.q_proj.weight_packed"
    assert q.convention == "divide" and q.logical_shape == (256, 256)
    assert set(q.scale_tensors) == {"block", "global", "input"}
    mixed = detect_quant(open_checkpoint(cached_fixture("modelopt-mixed").path))
    head = mixed.tensors["language_model.lm_head.weight"]
    assert head.format == "nvfp4" and head.convention == "multiply" and "input" not in head.scale_tensors
    k = mixed.tensors["language_model.model.layers.1.self_attn.k_proj.weight"]
    assert k.format == "fp8" and k.granularity == "tensor"
    assert "language_model.model.layers.1.self_attn.k_proj.k_scale" in mixed.sidecars
    assert any("kv cache FP8" in d for d in mixed.details)
    blk = detect_quant(open_checkpoint(cached_fixture("fp8-block").path))
    down = blk.tensors["model.layers.0.mlp.down_proj.weight"]
    assert down.granularity == "block" and down.block_size == (128, 128)


# -- refusals ---------------------------------------------------------------------------------
def _mutated(tmp_path, fmt, *, drop=(), replace=None, config=None, hf_quant=None):
    src = cached_fixture(fmt).path
    dst = tmp_path / fmt
    shutil.copytree(src, dst)
    sd = load_file(str(dst / "model.safetensors"))
    for k in drop:
        del sd[k]
    sd.update(replace or {})
    save_file(sd, str(dst / "model.safetensors"))
    if config:
        cfg = json.loads((dst / "config.json").read_text())
        config(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    if hf_quant:
        q = json.loads((dst / "hf_quant_config.json").read_text())
        hf_quant(q)
        (dst / "hf_quant_config.json").write_text(json.dumps(q))
    return dst


def _refused(path, *fragments, kind=QuantError):
    with pytest.raises(kind) as info:
        detect_quant(open_checkpoint(path))
    msg = str(info.value)
    assert "\n" not in msg and all(f in msg for f in fragments), msg


L0 = "language_model.model.layers.0."


def test_nvfp4_scales_missing(tmp_path):
    _refused(_mutated(tmp_path, "ct-nvfp4", drop=[L0 + "mlp.up_proj.weight_scale"]),
             f"'{L0}mlp.up_proj.weight_packed'", "no block scale", "weight_scale'")
    _refused(_mutated(tmp_path / "mo", "modelopt-nvfp4", drop=[L0 + "self_attn.o_proj.weight_scale_2"]),
             "no global scale", f"'{L0}self_attn.o_proj.weight_scale_2'")


def test_scale_of_wrong_dtype_or_shape(tmp_path):
    name = L0 + "mlp.down_proj.weight_scale"
    sd = load_file(str(cached_fixture("modelopt-nvfp4").path / "model.safetensors"))
    _refused(_mutated(tmp_path / "a", "modelopt-nvfp4", replace={name: sd[name].float()}),
             f"'{name}' is F32, expected F8_E4M3")
    _refused(_mutated(tmp_path / "b", "modelopt-nvfp4", replace={name: sd[name][:, :-1].contiguous()}),
             f"'{name}' has shape [256, 31], expected [256, 32]")
    inv = "model.layers.1.mlp.up_proj.weight_scale_inv"
    _refused(_mutated(tmp_path / "c", "fp8-block", replace={inv: torch.ones(3, 2)}), f"'{inv}' has shape [3, 2]")


def test_nvfp4_k_not_divisible_by_16(tmp_path):
    m = L0 + "self_attn.v_proj"
    bad = {m + ".weight_packed": torch.zeros(128, 12, dtype=torch.uint8),
           m + ".weight_scale": torch.zeros(128, 1, dtype=torch.float8_e4m3fn)}
    _refused(_mutated(tmp_path, "ct-nvfp4", replace=bad), f"'{m}.weight_packed'", "K=24", "divisible by the block size 16")


def test_compressed_tensors_ignore_list_that_leaves_a_linear_uncovered(tmp_path):
    def drop_head(cfg):
        cfg["quantization_config"]["ignore"].remove("language_model.lm_head")
    _refused(_mutated(tmp_path, "ct-nvfp4", config=drop_head), "Linear 'language_model.lm_head' is stored as BF16",
             "neither packed nor in the ignore list")


def test_packed_weight_in_an_ignored_module(tmp_path):
    def ignore_q(cfg):
        cfg["quantization_config"]["ignore"].append("re:.*layers.0.self_attn.q_proj$")
    _refused(_mutated(tmp_path, "ct-nvfp4", config=ignore_q), f"'{L0}self_attn.q_proj.weight_packed'",
             "ignore entry")


def test_modelopt_mixed_contradictions(tmp_path):
    sd = load_file(str(cached_fixture("modelopt-mixed").original / "model.safetensors"))
    q = L0 + "self_attn.q_proj"
    dense_q = {q + ".weight": sd[q + ".weight"]}
    path = _mutated(tmp_path / "a", "modelopt-mixed", replace=dense_q,
                    drop=[q + ".weight", q + ".weight_scale", q + ".input_scale"])
    _refused(path, f"'{q}.weight' is stored as BF16", "declares", "FP8")

    def as_nvfp4(hq):
        hq["quantization"]["quantized_layers"][q]["quant_algo"] = "NVFP4"
    _refused(_mutated(tmp_path / "b", "modelopt-mixed", hf_quant=as_nvfp4),
             f"'{q}.weight' is stored as F8_E4M3 (FP8)", "declares", "NVFP4")

    def unlist(hq):
        del hq["quantization"]["quantized_layers"][q]
    _refused(_mutated(tmp_path / "c", "modelopt-mixed", hf_quant=unlist), "does not list it in quantized_layers")

    def awq(hq):
        hq["quantization"]["quantized_layers"][q]["quant_algo"] = "W4A16_AWQ"
    _refused(_mutated(tmp_path / "d", "modelopt-mixed", hf_quant=awq), "'W4A16_AWQ' is not supported")


def test_orphan_scale_and_stray_quantized_tensor(tmp_path):
    _refused(_mutated(tmp_path / "a", "ct-fp8", replace={"language_model.model.norm.weight_scale": torch.ones(1)}),
             "scale 'language_model.model.norm.weight_scale' belongs to no quantized weight")
    sd = load_file(str(cached_fixture("ct-fp8").original / "model.safetensors"))
    orig = cached_fixture("ct-fp8").original
    dst = tmp_path / "b"
    shutil.copytree(orig, dst)
    sd[L0 + "mlp.up_proj.weight"] = sd[L0 + "mlp.up_proj.weight"].to(torch.float8_e4m3fn)
    save_file(sd, str(dst / "model.safetensors"))
    _refused(dst, f"'{L0}mlp.up_proj.weight' is stored as F8_E4M3", "declares no quantization")


@pytest.mark.parametrize("method,label", [("awq", "AWQ"), ("gptq", "GPTQ"), ("bitsandbytes", "bitsandbytes"),
                                          ("hqq", "HQQ"), ("mxfp4", "MXFP4 (gpt-oss)")])
def test_unsupported_methods_are_refused_by_name(tmp_path, method, label):
    def set_method(cfg):
        cfg["quantization_config"] = {"quant_method": method, "bits": 4}
    path = _mutated(tmp_path, "fp8-block", config=set_method)
    _refused(path, f"quant_method '{method}' ({label}) is not supported by imp")


def test_unsupported_compressed_tensors_scheme(tmp_path):
    def int4(cfg):
        g = cfg["quantization_config"]["config_groups"]["group_0"]["weights"]
        g.update(num_bits=4, type="int", group_size=128, strategy="group")
    _refused(_mutated(tmp_path, "ct-fp8", config=int4), "int 4-bit weights", "not supported by imp")


def test_every_refusal_is_an_imp_error():
    assert issubclass(QuantError, ImpError)


@pytest.mark.parametrize("fmt", ["modelopt-nvfp4", "modelopt-mixed"])
def test_modelopt_config_json_alone_gives_the_same_plan(tmp_path, fmt):
    """ModelOpt's converted quantization_config (convert_hf_quant_config_format) without hf_quant_config.json."""
    path = _mutated(tmp_path, fmt)
    (path / "hf_quant_config.json").unlink()
    a = detect_quant(open_checkpoint(cached_fixture(fmt).path))
    b = detect_quant(open_checkpoint(path))
    assert {k: (v.format, v.granularity, v.convention) for k, v in a.tensors.items()} == \
        {k: (v.format, v.granularity, v.convention) for k, v in b.tensors.items()}
