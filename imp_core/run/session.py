"""From a checkpoint path to a model ready to run: the resolved plan, then the weights.

``inspect_checkpoint`` does everything that needs no tensor bytes (architecture, config, quant
plan, phases, attention backends, fast-path eligibility, per-family settings) and is what
``imp info`` shows; ``load_session`` adds the weights and the tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from loguru import logger

from imp_core.plugin import policy
from imp_core.run import preflight
from imp_core.checkpoint.base import Checkpoint
from imp_core.checkpoint.open import open_checkpoint
from imp_core.device_memory import apply_limit
from imp_core.errors import ConfigError, DeviceError, QuantError
from imp_core.model.family import CausalLM, Family
from imp_core.run.generator import PREFILL_CHUNK, Generator
from imp_core.run.sampling import Sampler, SamplingParams
from imp_core.plugin.attention_registry import AttentionBackend
from imp_core.plugin.plan_types import ArchitectureSpec, AttentionChoice, ModelInfo, PhaseDecision
from imp_core.plugin.manager import PluginSet
from imp_core.quant.plan import QuantPlan
from imp_core.settings.resolve import ResolvedSettings
from imp_core.model.weights import WeightStore
from imp_core.units import DTYPES

DEFAULT_CONTEXT = 4096
GENERATION_CONFIG_KEYS = {"temperature": "sampling.temperature", "top_k": "sampling.top_k",
                          "top_p": "sampling.top_p", "min_p": "sampling.min_p",
                          "repetition_penalty": "sampling.repeat_penalty"}


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"runtime.device is '{spec}' but no CUDA device is available "
                              f"(torch {torch.__version__}); use --device cpu")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"runtime.device is '{spec}' but only {torch.cuda.device_count()} "
                              f"CUDA device(s) exist")
        return dev
    return torch.device(spec)


def resolve_dtype(spec: str, checkpoint: Checkpoint, device: torch.device | None = None) -> torch.dtype:
    """``auto``: float32 on the CPU (CPUs without bf16 units run bf16 matmuls ~30x slower than
    fp32 in torch; measured 23 vs 686 tok/s on this project's CI machine), else the checkpoint's
    dtype (bfloat16 when it names none)."""
    if spec != "auto":
        return DTYPES[spec]
    if device is not None and device.type == "cpu":
        return torch.float32
    cfg = checkpoint.text_config
    stored = cfg.get("dtype") or cfg.get("torch_dtype") or checkpoint.config.get("dtype") \
        or checkpoint.config.get("torch_dtype")
    return DTYPES.get(str(stored), torch.bfloat16)


@dataclass
class Inspection:
    """Everything decided about a checkpoint before any tensor byte is read."""

    checkpoint: Checkpoint
    spec: ArchitectureSpec
    family: Family
    config: Any
    info: ModelInfo
    quant_plan: QuantPlan
    settings: ResolvedSettings
    device: torch.device
    dtype: torch.dtype
    context: int
    phases: list[PhaseDecision]
    attention: list[AttentionChoice]
    fast_path_reasons: list[str]
    plan: list[tuple[str, str]] = field(default_factory=list)
    load_report: list[tuple[str, str]] = field(default_factory=list)  # what Phase 0 did (after loading)
    #: the chosen backend object of every attention layer, by layer index (what the model runs)
    attention_backends: dict[int, AttentionBackend] = field(default_factory=dict)
    memory: Any = None  # a preflight.MemoryPlan for a one-token prompt


def _generation_defaults(checkpoint: Checkpoint, resolved: ResolvedSettings
                         ) -> tuple[ResolvedSettings, list[tuple[str, str]]]:
    gen = checkpoint.read_json("generation_config.json") or {}
    values: dict[str, Any] = {}
    if gen.get("do_sample") is False:
        values["sampling.temperature"] = 0.0
    else:
        for src, key in GENERATION_CONFIG_KEYS.items():
            if isinstance(gen.get(src), (int, float)) and not isinstance(gen.get(src), bool):
                values[key] = gen[src]
    values = {k: v for k, v in values.items() if resolved.is_default(k)}
    if not values:
        return resolved, []
    resolved = resolved.with_overrides(values, "generation_config.json")
    return resolved, [("sampling", ", ".join(f"{k.split('.')[1]}={v}" for k, v in values.items())
                       + " (from generation_config.json)")]


def check_implemented(s) -> None:
    """Settings whose non-default values are not implemented yet are refused, never ignored."""
    if s.kv_cache.dtype != "auto":
        raise ConfigError(f"kv_cache.dtype '{s.kv_cache.dtype}' is not supported yet (only 'auto': the compute dtype)")
    if s.moe.experts_impl != "auto":
        raise ConfigError(f"moe.experts_impl '{s.moe.experts_impl}' is not supported yet (only 'auto')")


def fast_path_reasons(plugins: PluginSet, family: Family, info: ModelInfo, s, device: torch.device,
                       dtype: torch.dtype) -> list[str]:
    """The one eligibility predicate, with the core's environment facts gathered here (the
    kernel import is only tried when nothing else already rules the fast path out)."""
    from imp_core.fast import eligibility

    args = dict(dtype=dtype, family_has_fast=family.has_fast_decode, simulator=eligibility.simulator_on())
    reasons = policy.fast_path_reasons(plugins.hook, info, s, device, **args)
    if not reasons:
        err = eligibility.kernels_importable()
        if err:
            reasons = policy.fast_path_reasons(plugins.hook, info, s, device, kernels_error=err, **args)
    return reasons


def inspect_checkpoint(path: str | Path, resolved: ResolvedSettings, plugins: PluginSet) -> Inspection:
    """Resolve the architecture and every policy decision for ``path``; read no tensor bytes."""
    checkpoint = open_checkpoint(path)
    spec = plugins.resolve(hf_architectures=checkpoint.hf_architectures,
                           model_types=checkpoint.model_types,
                           gguf_architecture=checkpoint.gguf_architecture, where=str(checkpoint.path))
    family = plugins.load_family(spec)
    if checkpoint.format == "gguf":
        from imp_core.checkpoint.gguf_names import config_for_gguf

        checkpoint.config = config_for_gguf(family, checkpoint)
    config = family.parse_config(checkpoint)
    quant_plan = plugins.hook.imp_detect_quant(checkpoint=checkpoint, family=spec.family)
    if quant_plan is None:
        raise QuantError(f"{checkpoint.path}: no quant detector recognised this checkpoint")
    info = family.model_info(config, checkpoint)
    if quant_plan.tensors:
        from dataclasses import replace

        info = replace(info, quant_formats=frozenset(quant_plan.formats - {"dense"}),
                       prequantized_nvfp4=any(f.startswith("nvfp4") for f in quant_plan.formats))

    resolved, family_lines = policy.apply_family_settings(plugins.hook, info, resolved)
    resolved, gen_lines = _generation_defaults(checkpoint, resolved)
    s = resolved.settings
    check_implemented(s)
    device = resolve_device(s.runtime.device)
    apply_limit(device, s.runtime.memory_limit)
    dtype = resolve_dtype(s.runtime.dtype, checkpoint, device)
    max_ctx = family.max_context(config)
    context = s.runtime.context or min(max_ctx, DEFAULT_CONTEXT)
    if context > max_ctx:
        logger.warning("runtime.context {} exceeds the model's max_position_embeddings {}", context, max_ctx)

    reasons = fast_path_reasons(plugins, family, info, s, device, dtype)
    fast = not reasons
    if s.runtime.fast_path == "on" and not fast:
        raise ConfigError("runtime.fast_path is 'on' but the decode fast path cannot run: " + "; ".join(reasons))
    phases = policy.plan_phases(plugins.hook, info, s, device, fast)
    attention = policy.choose_attention(plugins.hook, info.attention_layers, s, device, plugins.attention, dtype,
                                        fast)

    plan = [
        ("architecture", f"{info.architecture} -> family '{spec.family}' (plugin {spec.plugin})"),
        ("checkpoint", f"{checkpoint.path} ({checkpoint.format}, {len(checkpoint.tensors)} tensors, "
                       f"{checkpoint.total_bytes / 2**30:.2f} GiB)"),
        ("weights", quant_plan.summary()),
        *[("quant", d) for d in quant_plan.details],
        ("device / dtype", f"{device} / {str(dtype).replace('torch.', '')}"
                           + (" (auto: float32 on the CPU)" if s.runtime.dtype == "auto" and device.type == "cpu"
                              else " (auto: the checkpoint's)" if s.runtime.dtype == "auto" else "")),
        ("context", f"{context} tokens ({'runtime.context' if s.runtime.context else 'auto'}; "
                    f"model max {max_ctx})"),
        *family_lines, *gen_lines,
        *[(f"phase {p.phase}", f"{'on' if p.enabled else 'off'} - {p.reason}"
           + (f" [{p.decided_by}]" if p.decided_by != "core" else "")) for p in phases],
        *policy.summarize_attention(info.attention_layers, attention),
        ("decode fast path", "on" if not reasons else "off - " + "; ".join(reasons)),
    ]
    backends = {layer.index: plugins.attention[c.backend] for layer, c in zip(info.attention_layers, attention)}
    insp = Inspection(checkpoint, spec, family, config, info, quant_plan, resolved, device, dtype,
                      context, phases, attention, reasons, plan, attention_backends=backends)
    tensors = preflight.model_tensors(insp)
    preflight.check_embedding(insp, tensors)
    insp.memory = preflight.plan_memory(insp, tensors, prompt_tokens=1)
    plan.append(("memory", insp.memory.describe()))
    notice = demo_notice(checkpoint)
    if notice:
        plan.insert(0, ("note", notice))
    return insp


def demo_notice(checkpoint: Checkpoint) -> str | None:
    """The demo checkpoint's reminder that its weights are random (see imp_mistral.demo)."""
    note = checkpoint.config.get("imp_demo")
    return f"demo checkpoint: {note}" if isinstance(note, str) else None


def context_setting(insp: Inspection) -> str:
    """How the context was chosen, for messages: "4096 (runtime.context)" or "4096 (auto)"."""
    s = insp.settings
    return f"{insp.context} ({'runtime.context' if s.settings.runtime.context else 'auto'})"


@dataclass
class Session:
    """A loaded model, its tokenizer and the plan that produced them; ``fast`` is the bound
    decode fast path (None on the reference path)."""

    inspection: Inspection
    model: CausalLM
    tokenizer: Any
    fast: Any = None

    def generator(self, *, context: int | None = None, cuda_graphs: bool | None = None) -> Generator:
        """A generator for one sequence: the fast decoder when the fast path is bound; CUDA
        graphs as ``runtime.cuda_graphs`` says unless ``cuda_graphs`` is given."""
        insp = self.inspection
        graphs = insp.settings.settings.runtime.cuda_graphs if cuda_graphs is None else cuda_graphs
        chunk = insp.memory.prefill_chunk if insp.memory is not None else PREFILL_CHUNK
        return Generator(self.model, context or insp.context, cuda_graphs=graphs, prefill_chunk=chunk,
                         decoder=self.fast.decoder if self.fast is not None else None)

    def sampler(self, params: SamplingParams) -> Sampler:
        """The sampler for ``params`` (see ``sampler_for``)."""
        return sampler_for(self.inspection, params)[0]


def sampler_for(insp: Inspection, params: SamplingParams) -> tuple[Sampler, str]:
    """(sampler, plan line): on the decode fast path the device sampling kernel where it
    reproduces ``Sampler`` token for token, else ``Sampler``. Needs no weights."""
    vocab = insp.info.vocab_size
    if insp.fast_path_reasons:
        return Sampler(params, vocab_size=vocab, device=insp.device), "torch ops (reference path)"
    from imp_core.fast.sampling import fast_sampler

    return fast_sampler(params, vocab, insp.device)


def renames(insp: Inspection) -> tuple[Any, Any]:
    """(rename, transform) for the WeightStore: the family's own, behind the GGUF name table."""
    rename = insp.family.rename(insp.config, insp.checkpoint)
    if insp.checkpoint.format != "gguf":
        return rename, None
    from imp_core.checkpoint.gguf_names import gguf_rename, gguf_transform

    table = insp.family.gguf_names()
    return (gguf_rename(table, rename),
            gguf_transform(insp.family.gguf_transforms(insp.config, insp.checkpoint.metadata)))


def build_model(insp: Inspection, *, progress: bool = True) -> CausalLM:
    """Read the weights and build the model the inspection planned; log what Phase 0 did."""
    from imp_core.model.phases import PhasePipeline
    from imp_core.run.prefill_plan import prefill_summary

    rename, transform = renames(insp)
    pipeline = PhasePipeline(insp.phases, insp.quant_plan, dequant=insp.settings.settings.quant.dequant,
                             dtype=insp.dtype, device=insp.device, keep_packed=not insp.fast_path_reasons,
                             reserve=insp.memory.cache + insp.memory.workspace if insp.memory is not None else 0)
    weights = WeightStore(insp.checkpoint, device=insp.device, dtype=insp.dtype,
                          quant_plan=insp.quant_plan, extra_skip=insp.family.skip_prefixes,
                          rename=rename, progress=progress, transform=transform, phases=pipeline)
    weights.config = insp.config  # names the config keys in shape errors (imp_core.model.loading)
    model = insp.family.build(insp.config, weights)
    weights.finish(strict=True)
    model.set_attention_backends(insp.attention_backends)
    pipeline.run_after_build(model)
    insp.load_report = pipeline.report()
    chunk = insp.memory.prefill_chunk if insp.memory is not None else PREFILL_CHUNK
    insp.load_report.append(("prefill", prefill_summary(model, chunk)))
    for label, text in insp.load_report:
        logger.info("{}: {}", label, text)
    return model


def load_tokenizer(insp: Inspection) -> Any:
    from imp_core.text.tokenizer import Tokenizer

    builder = getattr(insp.family, "tokenizer", None)
    if builder is not None:
        tok = builder(insp.config, insp.checkpoint)
        if tok is not None:
            return tok
    if insp.checkpoint.format == "gguf":
        from imp_core.text.gguf_tokenizer import tokenizer_from_gguf

        return tokenizer_from_gguf(insp.checkpoint.metadata, source=str(insp.checkpoint.path))
    return Tokenizer.from_dir(insp.checkpoint.directory)


def bind_fast(insp: Inspection, model: CausalLM) -> Any:
    """Bind the decode fast path when the predicate allows it (phases 3a / 3-MoE happen here)."""
    if insp.fast_path_reasons:
        return None
    from imp_core.fast.model import bind_fast_path

    fast = bind_fast_path(insp.family, model)
    for label, text in fast.plan:
        logger.info("{}: {}", label, text)
    insp.load_report.extend(fast.plan)
    return fast


def load_session(path: str | Path, resolved: ResolvedSettings, plugins: PluginSet, *,
                 progress: bool = True, inspection: Inspection | None = None, tokenizer: Any = None) -> Session:
    """Inspect (unless ``inspection`` is given), read the tokenizer and the weights, bind the
    fast path where eligible."""
    insp = inspection or inspect_checkpoint(path, resolved, plugins)
    preflight.check_memory(insp.memory, context_setting(insp))
    if insp.settings.settings.runtime.threads:
        torch.set_num_threads(insp.settings.settings.runtime.threads)
    tokenizer = tokenizer or load_tokenizer(insp)
    model = build_model(insp, progress=progress)
    return Session(insp, model, tokenizer, bind_fast(insp, model))
