"""Quantized tiny Qwen3.6 and Gemma-4 checkpoints made by the real producers, plus dequantised twins.

Each fixture starts from the family's tiny random BF16 checkpoint in the published multimodal layout
(tests/qwen36_factory "fused", tests/gemma4_factory "gemma4"; "qwen36-dense" is the dense qwen3_5
sibling, Qwen3_5ForCausalLM), at a hidden size of 256 so GGUF K-quants apply, with 6 experts (top-2),
and yields (as tests/format_factory.py does for Mistral):
- ``path``: the quantized checkpoint as the producer lays it out;
- ``dense``: the same model with every quantized weight replaced by the PRODUCER's own
  dequantisation (fp32), in the original's layout (fused 3-D experts): the transformers oracle;
- ``original``: the BF16 original, for the quantisation error.

Formats (``FORMATS[family]``) and what writes them:
- ``ct-nvfp4``: compressed-tensors 0.20 (``generate_gparam``, ``calculate_qparams``,
  ``NVFP4PackedCompressor.compress``; config via ``QuantizationConfig``); experts per expert, as
  llm-compressor's linearised MoE saves them (docs/formats.md, "NVFP4 MoE experts"); q/k/v, gate/up sharing one global
  scale as llm-compressor links them; reference = compressed-tensors' ``dequantize``.
  Qwen: attention, experts and shared expert NVFP4; the DeltaNet, routers, shared-expert gate and
  lm_head ignored (RedHatAI/Qwen3.5-*-NVFP4). Gemma: every Linear but the router,
  embeddings and vision tower (llm-compressor's Gemma-4 NVFP4 MoE example).
- ``ct-nvfp4-3d``: the same weights with the experts repacked 3-D the way llm-compressor's
  ``repack_moe`` stacks the qparams (``LinearExperts2D._pack_weight_qparams``: gate/up block scales
  concatenated on the last axis, global scales [E, 2]); llm-compressor itself cannot be installed
  beside transformers 5.24 (it pins <= 5.17), so the stacking is written out here after its source.
- ``ct-fp8``: compressed-tensors ``FP8_DYNAMIC`` (per-channel) with ``FloatQuantizationCompressor``;
  Qwen also quantizes the DeltaNet's in_proj_qkv / in_proj_z / out_proj.
- ``modelopt-mixed`` (Qwen): MIXED_PRECISION shaped like nvidia/Qwen3.6-35B-A3B-NVFP4 (docs/formats.md, "Mixed-precision checkpoints"): routed
  experts, shared expert and lm_head W4A16_NVFP4 (``NVFP4QTensor.quantize``, gate/up sharing
  ``weight_scale_2`` per expert as ``sync_moe_gate_up_amax`` makes them), self-attention and the
  DeltaNet's in_proj_qkv / in_proj_z / out_proj FP8 per tensor (``FP8QTensor.quantize``) with input
  scales; in_proj_a/b, conv1d, routers, shared-expert gate, norms and embeddings BF16; FP8 KV cache
  declared with k/v scales. ModelOpt's quantize functions run on CPU, so no formula is re-derived.
- ``modelopt-nvfp4`` (Gemma): ``quant_algo: NVFP4`` (W4A4, input scales shared per projection type)
  on the dense MLP and the experts (the ``nvfp4_mlp_only`` scope NVIDIA's Gemma-4 exports use);
  attention, router and embeddings excluded. ``router.per_expert_scale`` stays a plain tensor.
- ``gguf-q8_0`` / ``gguf-q4_k_m`` (both), ``gguf-nvfp4`` (Gemma, per_expert_scale folded into the NVFP4
  down experts' scale as llama.cpp does): tests/format_factory_moe_gguf.py.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.format_factory import _mo_fp8, _mo_nvfp4, _write_dir

FORMATS = {
    "qwen36": ("ct-nvfp4", "ct-nvfp4-3d", "ct-fp8", "modelopt-mixed", "gguf-q8_0", "gguf-q4_k_m"),
    "gemma4": ("ct-nvfp4", "ct-nvfp4-3d", "ct-fp8", "modelopt-nvfp4", "gguf-q8_0", "gguf-q4_k_m", "gguf-nvfp4"),
    "qwen36-dense": ("gguf-q4_k_m",),  # the dense qwen3_5 sibling, GGUF arch qwen35
}
QWEN_TEXT = dict(hidden_size=256, head_dim=32, linear_key_head_dim=32, linear_value_head_dim=32, num_experts=6,
                 moe_intermediate_size=32, shared_expert_intermediate_size=64)
QWEN_DENSE_TEXT = dict(hidden_size=256, head_dim=32, linear_key_head_dim=32, linear_value_head_dim=32,
                       intermediate_size=128)
GEMMA_TEXT = dict(hidden_size=256, num_experts=6, moe_intermediate_size=64)  # 64: GGUF NVFP4 down experts
ROOT = "model.language_model."


@dataclass
class MoeFixture:
    family: str
    fmt: str
    path: Path
    dense: Path
    original: Path


# -- the model's Linear modules, by role ----------------------------------------------------------
def _layers(cfg: dict) -> range:
    return range(cfg["num_hidden_layers"])


def _expert_root(family: str, i: int) -> str:
    return f"{ROOT}layers.{i}.mlp.experts." if family == "qwen36" else f"{ROOT}layers.{i}.experts."


def split_experts(family: str, cfg: dict, sd: dict) -> dict[str, torch.Tensor]:
    """{per-expert module: fp32 weight}: the fused 3-D experts cut as ModelOpt / llm-compressor cut them."""
    out = {}
    for i in _layers(cfg):
        root = _expert_root(family, i)
        gate_up, down = sd[root + "gate_up_proj"].float(), sd[root + "down_proj"].float()
        inter = gate_up.shape[1] // 2
        for e in range(gate_up.shape[0]):
            out[f"{root}{e}.gate_proj"] = gate_up[e, :inter]
            out[f"{root}{e}.up_proj"] = gate_up[e, inter:]
            out[f"{root}{e}.down_proj"] = down[e]
    return out


def linear_modules(family: str, cfg: dict, sd: dict, roles: set[str]) -> list[str]:
    """Stored module names of the 2-D Linears in ``roles`` (attention, mlp, shared_expert, deltanet)."""
    picks = {
        "attention": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
        "mlp": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
        "shared_expert": ("mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj",
                          "mlp.shared_expert.down_proj"),
        "deltanet": ("linear_attn.in_proj_qkv", "linear_attn.in_proj_z", "linear_attn.out_proj"),
    }
    out = []
    for i in _layers(cfg):
        for role in sorted(roles):
            out += [f"{ROOT}layers.{i}.{p}" for p in picks[role] if f"{ROOT}layers.{i}.{p}.weight" in sd]
    return out


def fused_group(module: str) -> tuple[str, ...]:
    """The modules that share a global scale with ``module`` (q/k/v; gate/up) in both producers."""
    base, _, leaf = module.rpartition(".")
    for group in (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")):
        if leaf in group:
            return tuple(f"{base}.{g}" for g in group)
    return (module,)


# -- compressed-tensors -------------------------------------------------------------------------
def ct_nvfp4(w: torch.Tensor, group: torch.Tensor) -> tuple[dict, torch.Tensor]:
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
    from compressed_tensors.quantization import preset_name_to_scheme
    from compressed_tensors.quantization.lifecycle.forward import dequantize
    from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam

    scheme = preset_name_to_scheme("NVFP4", ["Linear"])
    gscale = generate_gparam(group.min(), group.max())
    blocks = w.unflatten(-1, (w.shape[-1] // 16, 16))
    scale, _ = calculate_qparams(blocks.amin(-1), blocks.amax(-1), scheme.weights, global_scale=gscale)
    packed = NVFP4PackedCompressor.compress({"weight": w, "weight_scale": scale, "weight_global_scale": gscale},
                                            scheme)
    ref = dequantize(x_q=unpack_fp4_from_uint8(packed["weight_packed"], *w.shape, dtype=torch.float32),
                     scale=packed["weight_scale"].float(), args=scheme.weights,
                     global_scale=packed["weight_global_scale"], dtype=torch.float32)
    return dict(packed), ref


def ct_fp8(w: torch.Tensor) -> tuple[dict, torch.Tensor]:
    from compressed_tensors.compressors.naive_quantized.base import FloatQuantizationCompressor
    from compressed_tensors.quantization import preset_name_to_scheme
    from compressed_tensors.quantization.utils import calculate_qparams

    scheme = preset_name_to_scheme("FP8_DYNAMIC", ["Linear"])
    scale, _ = calculate_qparams(w.amin(1, keepdim=True), w.amax(1, keepdim=True), scheme.weights)
    packed = FloatQuantizationCompressor.compress({"weight": w, "weight_scale": scale}, scheme)
    ref = FloatQuantizationCompressor.decompress(dict(packed), scheme)["weight"].float()
    return {"weight": packed["weight"], "weight_scale": packed["weight_scale"]}, ref


def _ct_config(fmt: str, family: str) -> dict:
    from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme

    if family == "qwen36":
        ignore = ["lm_head", "re:.*mlp.gate$", "re:.*shared_expert_gate$", "re:.*visual.*"]
        ignore += ["re:.*in_proj_a$", "re:.*in_proj_b$"] if fmt == "ct-fp8" else ["re:.*linear_attn.*"]
    else:
        ignore = ["lm_head", "re:.*embed.*", "re:.*router", "re:.*vision_tower.*"]
    fp8 = fmt == "ct-fp8"
    scheme = preset_name_to_scheme("FP8_DYNAMIC" if fp8 else "NVFP4", ["Linear"])
    qc = QuantizationConfig(config_groups={"group_0": scheme}, format="float-quantized" if fp8 else
                            "nvfp4-pack-quantized", quantization_status="compressed", ignore=ignore)
    return qc.model_dump(mode="json", exclude_none=True)


def _repack_3d(family: str, cfg: dict, q: dict) -> None:
    """Per-expert NVFP4 tensors -> llm-compressor's repacked fused experts (in place)."""
    for i in _layers(cfg):
        root = _expert_root(family, i)
        n = cfg["num_experts"]

        def take(proj: str, key: str) -> torch.Tensor:
            return torch.stack([q.pop(f"{root}{e}.{proj}.{key}") for e in range(n)])

        for proj in ("gate_proj", "up_proj", "down_proj"):
            for e in range(n):
                q.pop(f"{root}{e}.{proj}.input_global_scale", None)
        gate = {k: take("gate_proj", k) for k in ("weight_packed", "weight_scale", "weight_global_scale")}
        up = {k: take("up_proj", k) for k in ("weight_packed", "weight_scale", "weight_global_scale")}
        down = {k: take("down_proj", k) for k in ("weight_packed", "weight_scale", "weight_global_scale")}
        q[root + "gate_up_proj_packed"] = torch.cat((gate["weight_packed"], up["weight_packed"]), dim=1)
        q[root + "gate_up_proj_scale"] = torch.cat((gate["weight_scale"], up["weight_scale"]), dim=-1)
        q[root + "gate_up_proj_global_scale"] = torch.stack(
            (gate["weight_global_scale"].reshape(n), up["weight_global_scale"].reshape(n)), dim=-1)
        q[root + "down_proj_packed"] = down["weight_packed"]
        q[root + "down_proj_scale"] = down["weight_scale"]
        q[root + "down_proj_global_scale"] = down["weight_global_scale"].reshape(n)


# -- one HF-layout fixture ------------------------------------------------------------------------
def _plan(family: str, fmt: str) -> dict[str, str]:
    """{role: "nvfp4" | "nvfp4-w4a16" | "fp8"} of one format (roles absent stay dense)."""
    if fmt.startswith("ct-nvfp4"):
        roles = {"attention", "experts", "shared_expert"} | ({"mlp"} if family == "gemma4" else set())
        return {r: "nvfp4" for r in roles}
    if fmt == "ct-fp8":
        roles = {"attention", "experts"} | ({"shared_expert", "deltanet"} if family == "qwen36" else {"mlp"})
        return {r: "fp8" for r in roles}
    if fmt == "modelopt-mixed":
        return {"experts": "nvfp4-w4a16", "shared_expert": "nvfp4-w4a16", "lm_head": "nvfp4-w4a16",
                "attention": "fp8", "deltanet": "fp8"}
    if fmt == "modelopt-nvfp4":
        return {"mlp": "nvfp4", "experts": "nvfp4"}
    raise ValueError(f"unknown format {fmt!r}")


def quantize_hf(family: str, fmt: str, cfg: dict, sd: dict) -> tuple[dict, dict, dict, dict | None]:
    """(quantized tensors, dense twin tensors, quantization_config, extra json files) of one format."""
    plan = _plan(family, fmt)
    weights: dict[str, torch.Tensor] = {}
    role_of: dict[str, str] = {}
    for m in linear_modules(family, cfg, sd, set(plan) - {"experts", "lm_head"}):
        weights[m] = sd[m + ".weight"].float()
        role_of[m] = "deltanet" if ".linear_attn." in m else "attention" if ".self_attn." in m else \
            "shared_expert" if ".shared_expert." in m else "mlp"
    if "experts" in plan:
        experts = split_experts(family, cfg, sd)
        weights.update(experts)
        role_of.update({m: "experts" for m in experts})
    if "lm_head" in plan:
        weights["lm_head"] = sd["lm_head.weight"].float()
        role_of["lm_head"] = "lm_head"
    modelopt = fmt.startswith("modelopt")
    q, dense = dict(sd), dict(sd)
    refs: dict[str, torch.Tensor] = {}
    layers: dict[str, dict] = {}
    for m, w in weights.items():
        kind = plan[role_of[m]]
        group = torch.cat([weights[g].flatten() for g in fused_group(m) if g in weights])
        if kind == "fp8" and modelopt:
            tensors, ref = _mo_fp8(w)
            tensors["input_scale"] = torch.tensor(2.5 / 448)
            layers[m] = {"quant_algo": "FP8"}
            if m.endswith(("self_attn.k_proj", "self_attn.v_proj")):
                tensors[m[-6] + "_scale"] = torch.tensor(1.5 / 448)  # k_scale / v_scale (FP8 KV cache)
        elif kind == "fp8":
            tensors, ref = ct_fp8(w)
        elif modelopt:
            tensors, ref = _mo_nvfp4(w, group)
            if kind == "nvfp4-w4a16":
                layers[m] = {"quant_algo": "W4A16_NVFP4", "group_size": 16}
            else:  # W4A4: one input quantizer per projection type, shared by all experts
                tensors["input_scale"] = torch.tensor((3.0 if "down_proj" not in m else 5.0) / 2688)
        else:
            tensors, ref = ct_nvfp4(w, group)
            tensors["input_global_scale"] = torch.tensor([448.0 * 6 / 3.5])
        q.pop(m + ".weight", None)
        q.update({f"{m}.{k}": v for k, v in tensors.items()})
        refs[m] = ref
    for m, ref in refs.items():
        if role_of[m] != "experts":
            dense[m + ".weight"] = ref
    if "experts" in plan:
        for i in _layers(cfg):
            root = _expert_root(family, i)
            n = cfg["num_experts"]
            q.pop(root + "gate_up_proj")
            q.pop(root + "down_proj")
            dense[root + "gate_up_proj"] = torch.stack(
                [torch.cat((refs[f"{root}{e}.gate_proj"], refs[f"{root}{e}.up_proj"])) for e in range(n)])
            dense[root + "down_proj"] = torch.stack([refs[f"{root}{e}.down_proj"] for e in range(n)])
    if fmt == "ct-nvfp4-3d":
        _repack_3d(family, cfg, q)
    if not modelopt:
        return q, dense, _ct_config(fmt, family), None
    return (q, dense, *_modelopt_config(family, fmt, layers))


def _modelopt_config(family: str, fmt: str, layers: dict) -> tuple[dict, dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from modelopt.torch.export.convert_hf_config import convert_hf_quant_config_format
    if fmt == "modelopt-mixed":
        quant = {"quant_algo": "MIXED_PRECISION", "kv_cache_quant_algo": "FP8", "group_size": 16,
                 "quantized_layers": layers, "exclude_modules": ["model.visual*", "mtp*"]}
    else:
        quant = {"quant_algo": "NVFP4", "kv_cache_quant_algo": None, "group_size": 16,
                 "exclude_modules": ["*self_attn*", "*router*", "lm_head", "model.vision_tower*",
                                     "model.embed_vision*"]}
    hf_quant = {"producer": {"name": "modelopt", "version": "0.47.0"}, "quantization": quant}
    return convert_hf_quant_config_format(hf_quant), {"hf_quant_config.json": hf_quant}


# -- entry point ----------------------------------------------------------------------------------
def write_original(family: str, dest: Path, *, seed: int = 0) -> Path:
    if family.startswith("qwen36"):
        from tests.qwen36_factory import write_checkpoint

        if family == "qwen36-dense":  # the dense qwen3_5 sibling (GGUF arch qwen35)
            return write_checkpoint(dest, "dense", seed=seed, dtype=torch.bfloat16, **QWEN_DENSE_TEXT)
        return write_checkpoint(dest, "fused", seed=seed, dtype=torch.bfloat16, **QWEN_TEXT)
    from tests.gemma4_factory import write_checkpoint

    return write_checkpoint(dest, "gemma4", seed=seed, dtype=torch.bfloat16, **GEMMA_TEXT)


def text_config(original: Path) -> dict:
    cfg = json.loads((original / "config.json").read_text())
    return cfg.get("text_config", cfg)


def make_fixture(family: str, fmt: str, root: Path, *, seed: int = 0) -> MoeFixture:
    """Write ``fmt`` of ``family`` (see FORMATS) under ``root``."""
    original = write_original(family, root / "original", seed=seed)
    cfg = text_config(original)
    sd = load_file(str(original / "model.safetensors"))
    if fmt.startswith("gguf"):
        from tests.format_factory_moe_gguf import write_family_gguf

        path, dense = write_family_gguf(family, fmt, root, original, cfg, sd)
    else:
        q, dense, qc, extra = quantize_hf(family, fmt, cfg, sd)
        path = _write_dir(root / "quantized", original, q, qc, extra)
    dense_dir = _write_dir(root / "dense", original, {k: v.float() for k, v in dense.items()})
    return MoeFixture(family, fmt, path, dense_dir, original)


_CACHE: dict[tuple[str, str], MoeFixture] = {}
_ROOT: list[Path] = []


def cached_fixture(family: str, fmt: str) -> MoeFixture:
    """``make_fixture`` once per test process (fixtures are read-only to the tests)."""
    if (family, fmt) not in _CACHE:
        import atexit
        import tempfile

        if not _ROOT:
            _ROOT.append(Path(tempfile.mkdtemp(prefix="imp-formats-moe-")))
            atexit.register(shutil.rmtree, _ROOT[0], True)
        _CACHE[(family, fmt)] = make_fixture(family, fmt, _ROOT[0] / family / fmt)
    return _CACHE[(family, fmt)]


def load_hf(family: str, path: Path):
    """transformers on a fixture directory (fp32, eager attention and experts): the oracle."""
    if family.startswith("qwen36"):
        from tests.qwen36_factory import load_hf as load

        return load(path, "dense" if family == "qwen36-dense" else "fused")
    from tests.gemma4_factory import load_hf as load

    return load(path, "gemma4")
