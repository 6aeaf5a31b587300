"""The core's default policy decisions and the walk that asks the plugins, pinned."""

from __future__ import annotations

import types
from dataclasses import replace

import pytest
import torch

from imp_core.layers.attention import sdpa_attention
from imp_core.plugin import policy
from imp_core.plugin.attention_registry import AttentionBackend
from imp_core.errors import ConfigError, PluginError
from imp_core.plugin.hookspecs import hookimpl
from imp_core.plugin.plan_types import AttentionChoice, AttentionLayerSpec, ModelInfo, PhaseDecision, SettingOverride
from imp_core.plugin.manager import load_plugins
from imp_core.settings.resolve import load_settings


def _settings(**flags):
    return load_settings(cli_flags=flags, env={}, user_config=None, cwd=None)


def _info(**kw):
    layers = (AttentionLayerSpec(0, "sliding", 8, 4, 256, sliding_window=128),
              AttentionLayerSpec(1, "full", 8, 2, 512))
    base = dict(family="f", architecture="FForCausalLM", num_layers=2, hidden_size=64, vocab_size=100,
                layer_kinds=("attention", "attention"), attention_layers=layers)
    base.update(kw)
    return ModelInfo(**base)


@pytest.fixture
def plain_plugins():
    return load_plugins(env={}, use_entry_points=False)


PHASE_TABLE = [
    # (quant formats, moe, fast path eligible) -> expected enabled per phase 0, 3a, 3b, 3-MoE
    (frozenset(), False, False, (False, False, False, False)),
    (frozenset(), True, True, (False, False, False, True)),
    (frozenset({"nvfp4"}), True, True, (True, False, True, True)),
    (frozenset({"nvfp4"}), True, False, (True, False, True, False)),
    (frozenset({"fp8"}), False, True, (True, False, True, False)),
    (frozenset({"gguf:Q4_K"}), True, True, (True, False, True, True)),
    (frozenset({"gguf:Q4_K", "gguf:Q5_0"}), True, True, (True, True, True, True)),
    (frozenset({"gguf:Q5_0"}), False, False, (True, False, True, False)),
    (frozenset({"mxfp4"}), True, True, (True, True, True, True)),
    (frozenset({"dense"}), False, True, (False, False, False, False)),
]


@pytest.mark.parametrize("formats,moe,fast,expected", PHASE_TABLE)
def test_core_phase_defaults(formats, moe, fast, expected):
    """The phases follow the fast-path predicate's answer (one rule, no second copy)."""
    info = _info(quant_formats=formats, is_moe=moe)
    s = _settings().settings
    got = tuple(policy.core_phase_decision(p, info, s, "cuda", fast).enabled for p in ("0", "3a", "3b", "3-MoE"))
    assert got == expected
    for p in ("0", "3a", "3b", "3-MoE"):
        assert policy.core_phase_decision(p, info, s, "cuda", fast).reason
    d3a = policy.core_phase_decision("3a", info, s, "cuda", fast)
    if d3a.enabled:
        assert "gguf:Q5_0" in d3a.reason or "mxfp4" in d3a.reason


def test_plugin_can_override_a_phase_and_must_keep_the_contract(plain_plugins):
    plug = types.ModuleType("phase_plug")

    @hookimpl
    def imp_phase_policy(phase, model, default, settings):  # a subset of the spec's parameters
        if phase == "3b":
            return replace(default, enabled=False, reason="family says no", decided_by="plug")
        return None

    plug.imp_phase_policy = imp_phase_policy
    plugins = load_plugins(env={}, extra=[("plug", plug)], use_entry_points=False)
    info = _info(quant_formats=frozenset({"nvfp4"}))
    out = policy.plan_phases(plugins.hook, info, _settings().settings, "cuda")
    assert [d.phase for d in out] == ["0", "3a", "3b", "3-MoE"]
    assert out[2] == PhaseDecision("3b", False, "family says no", decided_by="plug")

    bad = types.ModuleType("bad_phase")
    bad.imp_phase_policy = hookimpl(lambda phase, model, default, settings: PhaseDecision("0", True, "x"))
    plugins = load_plugins(env={}, extra=[("bad", bad)], use_entry_points=False)
    with pytest.raises(PluginError, match="phase 3a"):
        policy.plan_phases(plugins.hook, info, _settings().settings, "cuda")


@pytest.fixture
def hd256_backend(plain_plugins):
    plain_plugins.attention.register(AttentionBackend("tiny-hd256", sdpa_attention, frozenset({"cpu", "cuda"}),
                                                      max_head_dim=256))


def test_attention_chain_declines_by_capability(plain_plugins, hd256_backend):
    info = _info()
    choices = policy.choose_attention(plain_plugins.hook, info.attention_layers, _settings().settings, "cpu", plain_plugins.attention)
    assert [c.backend for c in choices] == ["tiny-hd256", "sdpa"]
    assert "supports head_dim <= 256" in choices[1].reason
    lines = dict(policy.summarize_attention(info.attention_layers, choices))
    assert lines["attention (full, 1 layer)"].startswith("sdpa")


def test_explicit_backend_setting_and_loud_failure(plain_plugins, hd256_backend):
    info = _info()
    s = _settings(**{"attention.backend": "eager"}).settings
    assert {c.backend for c in policy.choose_attention(plain_plugins.hook, info.attention_layers, s, "cpu", plain_plugins.attention)} == {"eager"}
    s = _settings(**{"attention.backend": "tiny-hd256"}).settings
    with pytest.raises(ConfigError, match="no attention backend can serve layer 1"):
        policy.choose_attention(plain_plugins.hook, info.attention_layers, s, "cpu", plain_plugins.attention)
    s = _settings(**{"attention.backend": "nonesuch"}).settings
    with pytest.raises(ConfigError, match="not a known backend"):
        policy.choose_attention(plain_plugins.hook, info.attention_layers, s, "cpu", plain_plugins.attention)


def test_plugin_attention_choice_must_be_a_candidate():
    plug = types.ModuleType("attn_plug")
    plug.imp_attention_backend = hookimpl(lambda layer, candidates: AttentionChoice("warp-drive", "why not"))
    plugins = load_plugins(env={}, extra=[("attn", plug)], use_entry_points=False)
    with pytest.raises(PluginError, match="warp-drive"):
        policy.choose_attention(plugins.hook, _info().attention_layers, _settings().settings, "cpu", plugins.attention)


def test_fast_path_is_one_predicate_with_every_reason(plain_plugins):
    info = _info()
    reasons = policy.fast_path_reasons(plain_plugins.hook, info, _settings().settings, "cpu")
    assert reasons[0] == "device is cpu, not cuda"
    assert policy.fast_path_reasons(plain_plugins.hook, info, _settings().settings, "cuda",
                                    dtype=torch.bfloat16) == []
    on = _settings(**{"runtime.fast_path": "on"}).settings
    assert policy.fast_path_reasons(plain_plugins.hook, info, on, "cpu", simulator=True) == []
    assert "device is cpu, not cuda" in policy.fast_path_reasons(plain_plugins.hook, info, _settings().settings, "cpu",
                                                                  simulator=True)
    dtype_off = policy.fast_path_reasons(plain_plugins.hook, info, _settings().settings, "cuda", dtype=torch.float32)
    assert dtype_off == ["the kernels compute in bfloat16, the run's dtype is float32 (--dtype bfloat16)"]
    no_family = policy.fast_path_reasons(plain_plugins.hook, info, _settings().settings, "cuda",
                                         family_has_fast=False, kernels_error="no numba")
    assert no_family == ["no numba", "the family has no fast decode step"]
    off = policy.fast_path_reasons(plain_plugins.hook, info, _settings(**{"runtime.fast_path": "off"}).settings, "cuda")
    assert "runtime.fast_path is off" in off
    plug = types.ModuleType("fp_plug")
    plug.imp_decode_fast_path = hookimpl(lambda model, settings: ["family veto: reasons"])
    plugins = load_plugins(env={}, extra=[("fp", plug)], use_entry_points=False)
    assert "family veto: reasons" in policy.fast_path_reasons(plugins.hook, info, _settings().settings, "cuda")


def test_family_settings_apply_only_to_defaults():
    plug = types.ModuleType("set_plug")
    plug.imp_adjust_settings = hookimpl(lambda model, settings: [
        SettingOverride("sampling.top_k", 20, "family recommends 20"),
        SettingOverride("sampling.temperature", 0.6, "family recommends 0.6")])
    plugins = load_plugins(env={}, extra=[("set", plug)], use_entry_points=False)
    resolved = _settings(**{"sampling.temperature": 0.1})
    out, lines = policy.apply_family_settings(plugins.hook, _info(), resolved)
    assert out.settings.sampling.top_k == 20 and out.sources["sampling.top_k"] == "f default"
    assert out.settings.sampling.temperature == 0.1
    assert any("kept user value" in v for _, v in lines)


def test_policy_hooks_receive_the_resolved_device():
    """A family can decide "on CUDA only": phase policy and fast-path hooks see the device."""
    plug = types.ModuleType("cuda_only")
    plug.imp_phase_policy = hookimpl(lambda phase, default, device: PhaseDecision(
        phase, device.type == "cuda", f"on {device.type}", decided_by="cuda_only") if phase == "3b" else None)
    plug.imp_decode_fast_path = hookimpl(lambda device: [] if device.type == "cuda" else [f"no {device}"])
    plugins = load_plugins(env={}, extra=[("cuda_only", plug)], use_entry_points=False)
    s = _settings().settings
    by_device = {dev: {d.phase: d for d in policy.plan_phases(plugins.hook, _info(), s, dev)}["3b"]
                 for dev in ("cpu", "cuda:0")}
    assert (by_device["cpu"].enabled, by_device["cuda:0"].enabled) == (False, True)
    assert by_device["cuda:0"].reason == "on cuda"
    assert "no cpu" in policy.fast_path_reasons(plugins.hook, _info(), s, "cpu")
    assert not any("no cuda" in r for r in policy.fast_path_reasons(plugins.hook, _info(), s, "cuda:0"))
