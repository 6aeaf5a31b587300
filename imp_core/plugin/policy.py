"""Policy decisions: pure functions of model metadata, settings and the plugins' answers.

Each function here is the core's default for one hook plus the walk that asks the plugins.
They read no tensors and touch no device, so unit tests pin every decision; the run logs the
answers once, in words, in the resolved plan.
"""

from __future__ import annotations

from typing import Any

import torch

from imp_core.fast.eligibility import core_reasons
from imp_core.plugin.attention_registry import AttentionRegistry
from imp_core.errors import ConfigError, PluginError
from imp_core.plugin.plan_types import (
    PHASES,
    AttentionChoice,
    AttentionLayerSpec,
    ModelInfo,
    PhaseDecision,
    SettingOverride,
)
from imp_core.settings.resolve import ResolvedSettings, Settings

PREQUANT_FORMATS = ("nvfp4", "fp8", "mxfp4")


def _has_prequant(info: ModelInfo) -> bool:
    return any(f.startswith(PREQUANT_FORMATS) or f.startswith("gguf:") for f in info.quant_formats)


# -- phases ----------------------------------------------------------------------------
#: quantized formats the decode kernels read as they are (everything else is converted by phase 3a)
KERNEL_FORMATS = ("nvfp4", "fp8", "gguf:Q8_0", "gguf:Q4_K", "gguf:Q6_K")
#: formats phase 3a widens exactly to a kernel format (the rest it converts to the reference's bf16)
WIDENED_FORMATS = {"gguf:Q4_0": "gguf:Q8_0", "gguf:Q5_0": "gguf:Q8_0"}


def _needs_conversion(info: ModelInfo) -> list[str]:
    return sorted(f for f in info.quant_formats if not f.startswith(KERNEL_FORMATS) and f != "dense")


def core_phase_decision(phase: str, info: ModelInfo, settings: Settings, device: torch.device | str,
                        fast_path: bool) -> PhaseDecision:
    """The core's default for one pre-dequant phase, given the fast-path predicate's answer."""
    packed = bool(info.quant_formats - {"dense"})
    if phase == "0":
        if _has_prequant(info):
            return PhaseDecision("0", True, "prequantized weights: attach scales to their packed tensors")
        return PhaseDecision("0", False, "no prequantized weights")
    if phase == "3a":
        if not fast_path:
            return PhaseDecision("3a", False, "no decode fast path: the reference path dequantises")
        convert = _needs_conversion(info)
        if convert:
            how = [f"{f} widened exactly to {WIDENED_FORMATS[f]}" if f in WIDENED_FORMATS else
                   f"{f} to bf16 (the reference path's own numbers)" for f in convert]
            return PhaseDecision("3a", True, "formats without a decode kernel, converted at bind time: "
                                             + ", ".join(how))
        return PhaseDecision("3a", False, "every weight format has a decode kernel")
    if phase == "3b":
        if not packed:
            return PhaseDecision("3b", False, "no packed weights: prefill uses the dense weights as they are")
        return PhaseDecision("3b", True, "packed weights get a dense prefill form: copies where memory allows, "
                                         "else dequantised layer by layer")
    if phase == "3-MoE":
        if not info.is_moe:
            return PhaseDecision("3-MoE", False, "not a mixture-of-experts model")
        if not fast_path:
            return PhaseDecision("3-MoE", False, "contiguous expert buffers only serve the decode fast path")
        return PhaseDecision("3-MoE", True, "one contiguous per-layer expert buffer per projection for "
                                            "device-side routing")
    raise ValueError(f"unknown phase {phase!r}")


def plan_phases(hook: Any, info: ModelInfo, settings: Settings, device: torch.device | str,
                fast_path: bool = False) -> list[PhaseDecision]:
    """Every phase's decision: the core default unless a plugin's ``imp_phase_policy`` overrides it.
    ``fast_path`` is the answer of ``fast_path_reasons`` (the one eligibility predicate)."""
    device = torch.device(device)
    out = []
    for phase in PHASES:
        default = core_phase_decision(phase, info, settings, device, fast_path)
        answer = hook.imp_phase_policy(phase=phase, model=info, default=default, settings=settings, device=device)
        if answer is None:
            out.append(default)
            continue
        if not isinstance(answer, PhaseDecision) or answer.phase != phase:
            raise PluginError(f"imp_phase_policy for phase {phase} returned {answer!r}; "
                              f"expected a PhaseDecision for that phase")
        out.append(answer)
    return out


# -- attention -------------------------------------------------------------------------
def attention_candidates(layer: AttentionLayerSpec, settings: Settings, device: torch.device | str,
                         registry: AttentionRegistry, dtype: torch.dtype | None = None,
                         fast_path: bool = False) -> tuple[list[str], list[str]]:
    """(backends that accept the layer, best first; reasons of those that declined)."""
    wanted = settings.attention.backend
    device_type = torch.device(device).type
    if wanted != "auto" and wanted not in registry:
        raise ConfigError(f"attention.backend '{wanted}' is not a known backend "
                          f"(known: auto, {', '.join(registry)})")
    names = list(registry) if wanted == "auto" else [wanted]
    accepted, declined = [], []
    for name in names:
        why = registry[name].declines(layer, device_type, dtype, fast_path)
        (declined if why else accepted).append(why or name)
    return accepted, declined


def choose_attention(hook: Any, layers: tuple[AttentionLayerSpec, ...], settings: Settings,
                     device: torch.device | str, registry: AttentionRegistry,
                     dtype: torch.dtype | None = None, fast_path: bool = False) -> list[AttentionChoice]:
    """One backend per attention layer; plugins may pick among (or decline) the candidates."""
    device = torch.device(device)
    out = []
    for layer in layers:
        candidates, declined = attention_candidates(layer, settings, device, registry, dtype, fast_path)
        if not candidates:
            raise ConfigError(f"no attention backend can serve layer {layer.index} "
                              f"(head_dim {layer.head_dim}, {layer.kind}): {'; '.join(declined)}")
        answer = hook.imp_attention_backend(layer=layer, candidates=list(candidates), registry=registry,
                                            settings=settings, device=device)
        if answer is None:
            reason = "first accepting backend" + (f" ({'; '.join(declined)})" if declined else "")
            out.append(AttentionChoice(candidates[0], reason))
            continue
        if not isinstance(answer, AttentionChoice) or answer.backend not in candidates:
            raise PluginError(f"imp_attention_backend for layer {layer.index} chose {answer!r}; "
                              f"expected one of {candidates}")
        out.append(answer)
    return out


def summarize_attention(layers: tuple[AttentionLayerSpec, ...], choices: list[AttentionChoice]
                        ) -> list[tuple[str, str]]:
    """Plan lines, grouping consecutive layers with the same kind and choice."""
    groups: dict[tuple[str, str, str], list[int]] = {}
    for layer, c in zip(layers, choices):
        groups.setdefault((layer.kind, c.backend, c.reason), []).append(layer.index)
    lines = []
    for (kind, backend, reason), idx in groups.items():
        label = f"attention ({kind}, {len(idx)} layer{'s' if len(idx) > 1 else ''})"
        lines.append((label, f"{backend} - {reason}"))
    return lines


# -- decode fast path ------------------------------------------------------------------
def fast_path_reasons(hook: Any, info: ModelInfo, settings: Settings, device: torch.device | str, *,
                      dtype: torch.dtype | None = None, family_has_fast: bool = True,
                      kernels_error: str | None = None, simulator: bool = False) -> list[str]:
    """The single eligibility predicate: the core's reasons and every plugin's, or [] if eligible.
    The phases and the generator both read this answer."""
    device = torch.device(device)
    reasons = core_reasons(setting=settings.runtime.fast_path, device=device, dtype=dtype,
                           family_has_fast=family_has_fast, kernels_error=kernels_error, simulator=simulator)
    for answer in hook.imp_decode_fast_path(model=info, settings=settings, device=device):
        if answer:
            reasons.extend(answer)
    return reasons


# -- per-family settings ---------------------------------------------------------------
def apply_family_settings(hook: Any, info: ModelInfo, resolved: ResolvedSettings
                          ) -> tuple[ResolvedSettings, list[tuple[str, str]]]:
    """Apply plugins' per-family defaults to keys the user left at default; return plan lines."""
    lines = []
    for answer in hook.imp_adjust_settings(model=info, settings=resolved.settings):
        for ov in answer or ():
            if not isinstance(ov, SettingOverride):
                raise PluginError(f"imp_adjust_settings returned {ov!r}; expected SettingOverride items")
            if not resolved.is_default(ov.key):
                lines.append((ov.key, f"kept user value ({resolved.sources[ov.key]}); family default "
                                      f"{ov.value!r} not applied"))
                continue
            resolved = resolved.with_overrides({ov.key: ov.value}, f"{info.family} default")
            lines.append((ov.key, f"{ov.value!r} - {ov.reason}"))
    return resolved, lines
