"""Phase 0 (packed weight + sidecars -> QTensor) for MoE expert layouts, the phase pipeline and the
dequant memory rule."""

from __future__ import annotations

import json

import pytest
import torch
from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme
from compressed_tensors.quantization.lifecycle.forward import dequantize as ct_dequantize
from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam
from safetensors.torch import save_file

from imp_core.checkpoint.open import open_checkpoint
from imp_core.model.phases import AUTO_LOAD_FRACTION, PhasePipeline, choose_dequant, dense_bytes
from imp_core.plugin.plan_types import PhaseDecision
from imp_core.quant import QTensor
from imp_core.quant.detect.dispatch import detect_quant
from imp_core.model.weights import WeightStore

E, H, I = 4, 64, 32
SCHEME = preset_name_to_scheme("NVFP4", ["Linear"])


def _ct(w):
    """compressed-tensors' own NVFP4 compression of one 2-D weight, and its fp32 dequantisation."""
    g = generate_gparam(w.min(), w.max())
    blocks = w.unflatten(-1, (w.shape[-1] // 16, 16))
    scale, _ = calculate_qparams(blocks.amin(-1), blocks.amax(-1), SCHEME.weights, global_scale=g)
    p = NVFP4PackedCompressor.compress({"weight": w, "weight_scale": scale, "weight_global_scale": g}, SCHEME)
    ref = ct_dequantize(x_q=unpack_fp4_from_uint8(p["weight_packed"], *w.shape, dtype=torch.float32),
                        scale=p["weight_scale"].float(), args=SCHEME.weights, global_scale=p["weight_global_scale"],
                        dtype=torch.float32)
    return p, ref


@pytest.fixture(scope="module")
def moe_checkpoint(tmp_path_factory):
    """Layer 0: per-expert 2-D tensors (llm-compressor's linearised experts); layer 1: the same
    experts repacked 3-D as llm-compressor's repack_moe stacks them (gate/up block scales
    concatenated on the last axis, global scales [E, 2])."""
    gen = torch.Generator().manual_seed(0)
    tensors, refs = {}, {}
    for layer in (0, 1):
        per = {p: [] for p in ("gate", "up", "down")}
        for e in range(E):
            for proj, shape in (("gate", (I, H)), ("up", (I, H)), ("down", (H, I))):
                per[proj].append(_ct(torch.randn(shape, generator=gen) * (e + 1)))
        root = f"model.layers.{layer}.mlp.experts."
        if layer == 0:
            for proj in per:
                for e, (p, ref) in enumerate(per[proj]):
                    tensors.update({f"{root}{e}.{proj}_proj.{k}": v for k, v in p.items()})
                    refs[f"{root}{e}.{proj}_proj.weight"] = ref
            continue
        stack = lambda proj, key: torch.stack([p[key] for p, _ in per[proj]])  # noqa: E731
        tensors[root + "gate_up_proj_packed"] = torch.cat((stack("gate", "weight_packed"), stack("up", "weight_packed")), 1)
        tensors[root + "gate_up_proj_scale"] = torch.cat((stack("gate", "weight_scale"), stack("up", "weight_scale")), -1)
        tensors[root + "gate_up_proj_global_scale"] = torch.cat(
            (stack("gate", "weight_global_scale"), stack("up", "weight_global_scale")), -1)
        tensors[root + "down_proj_packed"] = stack("down", "weight_packed")
        tensors[root + "down_proj_scale"] = stack("down", "weight_scale")
        tensors[root + "down_proj_global_scale"] = stack("down", "weight_global_scale")
        refs[root + "gate_up_proj"] = torch.stack([torch.cat((g, u)) for (_, g), (_, u) in zip(per["gate"], per["up"])])
        refs[root + "down_proj"] = torch.stack([r for _, r in per["down"]])
    tensors["model.embed_tokens.weight"] = torch.randn(16, H, generator=gen)
    path = tmp_path_factory.mktemp("moe")
    save_file(tensors, str(path / "model.safetensors"))
    qc = QuantizationConfig(config_groups={"group_0": SCHEME}, format="nvfp4-pack-quantized",
                            quantization_status="compressed", ignore=["lm_head"])
    (path / "config.json").write_text(json.dumps({"architectures": ["ToyMoe"],
                                                  "quantization_config": qc.model_dump(mode="json", exclude_none=True)}))
    return path, refs


def test_per_expert_and_repacked_3d_experts_load_as_qtensors(moe_checkpoint):
    path, refs = moe_checkpoint
    ck = open_checkpoint(path)
    plan = detect_quant(ck)
    gu = plan.tensors["model.layers.1.mlp.experts.gate_up_proj"]
    assert gu.logical_shape == (E, 2 * I, H) and gu.convention == "divide"
    store = WeightStore(ck, device=torch.device("cpu"), dtype=torch.float32, quant_plan=plan, progress=False)
    for name, ref in refs.items():
        qt = store.get(name)
        assert isinstance(qt, QTensor) and qt.shape == tuple(ref.shape)
        # producer fp32 dequant vs ours: same products, the global applied once (<= 2 ulp)
        torch.testing.assert_close(qt.dequantize(), ref, rtol=2.5e-7, atol=0)
    store.get("model.embed_tokens.weight")
    store.finish()


def test_dequant_memory_rule_is_a_pure_function():
    gib = 2**30
    assert choose_dequant("load", 10 * gib, 1 * gib)[0] == "load"
    assert choose_dequant("on_the_fly", 1, 100 * gib)[0] == "on_the_fly"
    assert choose_dequant("auto", int(AUTO_LOAD_FRACTION * 8 * gib), 8 * gib)[0] == "load"
    mode, why = choose_dequant("auto", 5 * gib, 8 * gib)
    assert mode == "on_the_fly" and "5.0 GiB exceeds 50% of 8.0 GiB" in why
    assert choose_dequant("auto", 5 * gib, None)[0] == "load"


def test_phase0_off_or_restricted_roles_make_weights_dense(moe_checkpoint):
    path, refs = moe_checkpoint
    ck = open_checkpoint(path)
    plan = detect_quant(ck)
    assert dense_bytes(plan, torch.bfloat16) == 2 * 2 * (E * 2 * I * H + E * H * I)

    def load(decision, dequant="on_the_fly"):
        pipe = PhasePipeline([decision], plan, dequant=dequant, dtype=torch.float32, available=1 << 40)
        store = WeightStore(ck, device=torch.device("cpu"), dtype=torch.float32, quant_plan=plan, progress=False,
                            phases=pipe)
        return pipe, {n: store.get(n) for n in refs}

    pipe, got = load(PhaseDecision("0", True, "on"))
    assert all(isinstance(w, QTensor) for w in got.values())
    assert pipe.report()[0][1].startswith("compressed-tensors: kept packed: 14 nvfp4")
    pipe, got = load(PhaseDecision("0", False, "a plugin turned it off"))
    assert all(isinstance(w, torch.Tensor) for w in got.values())
    for name, ref in refs.items():
        torch.testing.assert_close(got[name], ref, rtol=2.5e-7, atol=0)
    assert "made dense: 14 phase 0 off" in pipe.report()[0][1]
    pipe, got = load(PhaseDecision("0", True, "attention only", roles=frozenset({"attention"})))
    assert all(isinstance(w, torch.Tensor) for w in got.values())
    _, got = load(PhaseDecision("0", True, "on"), dequant="load")
    assert all(isinstance(w, torch.Tensor) for w in got.values())
