"""Gemma-4's policy answers pinned: attention backend per layer type, phases for NVFP4 checkpoints.

Attention: a test backend that serves head_dim <= 256 (registered for the test, then removed)
must be kept for the 25 sliding layers (head_dim 256) and declined for the 5 global layers
(head_dim 512) of the real 26B-A4B shape, with reasons that read well in the resolved plan.
Phases: for an NVFP4-prequantized Gemma-4, 3-MoE stays on and the attention-side phases are
restricted to the non-attention roles; everything else is the core's default.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from imp_core.layers.attention import sdpa_attention
from imp_core.plugin import policy
from imp_core.plugin.attention_registry import AttentionBackend
from imp_core.errors import ConfigError
from imp_core.cli.info import describe_checkpoint
from imp_core.plugin.plan_types import AttentionLayerSpec, PhaseDecision
from imp_core.plugin.manager import load_plugins
from imp_core.run.session import inspect_checkpoint
from imp_core.settings.resolve import Settings, load_settings
from imp_gemma4.family import Gemma4Family
from imp_gemma4.policy import NON_ATTENTION_ROLES, Gemma4AttentionLayerSpec, attention_backend, phase_decision
from imp_gemma4.presets import GEMMA_4_26B_A4B
from tests.gemma4_factory import write_checkpoint


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(env={})


@pytest.fixture(scope="module")
def real_info():
    family = Gemma4Family()
    return family.model_info(family.config_from_dict(GEMMA_4_26B_A4B), None)


def limited_backend(name: str, max_head_dim: int) -> AttentionBackend:
    return AttentionBackend(name, sdpa_attention, frozenset({"cpu", "cuda"}), max_head_dim=max_head_dim,
                            description=f"test: a kernel limited to head_dim {max_head_dim}")


@pytest.fixture
def fa256():
    """Plugins whose registry has a backend limited to head_dim 256 at the head of the chain."""
    plugins = load_plugins(env={})
    plugins.attention.register(limited_backend("fa256", 256))
    return plugins


# -- attention -------------------------------------------------------------------------
def test_head_dim_256_backend_kept_for_sliding_layers_and_declined_for_global(real_info, fa256):
    choices = policy.choose_attention(fa256.hook, real_info.attention_layers, Settings(), "cuda", fa256.attention)
    by_kind = {"sliding": set(), "full": set()}
    for layer, choice in zip(real_info.attention_layers, choices):
        by_kind[layer.kind].add((choice.backend, choice.reason, choice.decided_by))
    assert by_kind["sliding"] == {("fa256", "sliding layer (head_dim 256, window 1024): first backend in the "
                                            "chain that serves it", "gemma4")}
    assert by_kind["full"] == {("sdpa", "global layer (head_dim 512, 16/2 heads, K=V): first backend in the "
                                        "chain that serves it; declined fa256 (head_dim <= 256)", "gemma4")}
    lines = dict(policy.summarize_attention(real_info.attention_layers, choices))
    assert lines == {
        "attention (sliding, 25 layers)": "fa256 - sliding layer (head_dim 256, window 1024): first backend in "
                                          "the chain that serves it",
        "attention (full, 5 layers)": "sdpa - global layer (head_dim 512, 16/2 heads, K=V): first backend in "
                                      "the chain that serves it; declined fa256 (head_dim <= 256)",
    }
    assert [layer.index for layer, c in zip(real_info.attention_layers, choices) if c.backend == "sdpa"] == \
        [5, 11, 17, 23, 29]


def test_without_a_limited_backend_every_layer_takes_the_chain_head(plugins, real_info):
    choices = policy.choose_attention(plugins.hook, real_info.attention_layers, Settings(), "cpu", plugins.attention)
    assert {c.backend for c in choices} == {"sdpa"}
    assert not any("declined" in c.reason for c in choices)


def test_plugin_declines_a_too_small_backend_even_if_offered(real_info, fa256):
    global_layer = real_info.attention_layers[5]
    registry = fa256.attention
    choice = attention_backend(global_layer, ["fa256", "sdpa", "eager"], registry)
    assert choice.backend == "sdpa" and "declined fa256 (head_dim <= 256)" in choice.reason
    sliding = real_info.attention_layers[0]
    assert attention_backend(sliding, ["fa256", "sdpa"], registry).backend == "fa256"
    with pytest.raises(ConfigError, match="no attention backend serves the Gemma-4 global layer"):
        attention_backend(global_layer, ["fa256"], registry)


def test_attention_hook_answers_only_for_gemma4_layers(plugins):
    other = AttentionLayerSpec(index=0, kind="full", num_heads=32, num_kv_heads=8, head_dim=128, scale=128 ** -0.5)
    assert attention_backend(other, ["sdpa", "eager"], plugins.attention) is None
    assert plugins.hook.imp_attention_backend(layer=other, candidates=["sdpa"], registry=plugins.attention,
                                              settings=Settings(), device=torch.device("cpu")) is None
    assert isinstance(Gemma4AttentionLayerSpec(index=0, kind="full", num_heads=1, num_kv_heads=1, head_dim=8),
                      AttentionLayerSpec)


def test_user_forced_backend_is_respected_and_explained(plugins, real_info):
    settings = Settings()
    settings.attention.backend = "eager"
    choices = policy.choose_attention(plugins.hook, real_info.attention_layers, settings, "cpu", plugins.attention)
    assert {c.backend for c in choices} == {"eager"}
    assert choices[0].reason == "sliding layer (head_dim 256, window 1024): attention.backend = eager"
    assert choices[5].reason == "global layer (head_dim 512, 16/2 heads, K=V): attention.backend = eager"


# -- phases ----------------------------------------------------------------------------
def _table(plugins, info, device: str) -> dict[str, tuple[bool, frozenset | None, str]]:
    return {d.phase: (d.enabled, d.roles, d.decided_by)
            for d in policy.plan_phases(plugins.hook, info, Settings(), device, device == "cuda")}


def test_phase_table_nvfp4_prequantized(plugins, real_info):
    nvfp4 = replace(real_info, quant_formats=frozenset({"nvfp4-modelopt"}), prequantized_nvfp4=True)
    for device in ("cuda", "cpu"):
        assert _table(plugins, nvfp4, device) == {
            "0": (True, None, "core"),  # attach the scales: the core's default
            "3a": (False, None, "core"),  # already NVFP4: nothing to build
            "3b": (True, NON_ATTENTION_ROLES, "gemma4"),  # prefill forms, attention excluded
            "3-MoE": (True, None, "gemma4"),  # contiguous expert buffers stay on
        }, device
    assert NON_ATTENTION_ROLES == {"mlp", "experts", "lm_head"}
    decisions = {d.phase: d for d in policy.plan_phases(plugins.hook, nvfp4, Settings(), "cpu")}
    assert "only for experts, lm_head, mlp" in decisions["3b"].reason
    assert "attention weights keep one numeric form" in decisions["3b"].reason
    assert "kept on for NVFP4-prequantized Gemma-4" in decisions["3-MoE"].reason


def test_phase_table_unquantized_and_other_formats_are_core_defaults(plugins, real_info):
    for formats in (frozenset(), frozenset({"fp8-block"}), frozenset({"gguf:Q4_K"})):
        info = replace(real_info, quant_formats=formats)
        for device in ("cuda", "cpu"):
            fast = device == "cuda"
            ours = policy.plan_phases(plugins.hook, info, Settings(), device, fast)
            core = [policy.core_phase_decision(p, info, Settings(), device, fast) for p in ("0", "3a", "3b", "3-MoE")]
            assert ours == core, (formats, device)


def test_attention_side_3a_is_restricted_when_enabled(real_info):
    nvfp4 = replace(real_info, quant_formats=frozenset({"nvfp4-ct"}), prequantized_nvfp4=True)
    enabled = PhaseDecision("3a", True, "build an NVFP4 decode cache")
    d = phase_decision("3a", nvfp4, enabled)
    assert d.enabled and d.roles == NON_ATTENTION_ROLES and d.reason.startswith("build an NVFP4 decode cache; only")
    assert phase_decision("3a", nvfp4, PhaseDecision("3a", False, "off")) is None


def test_phase_policy_ignores_other_families(real_info):
    other = replace(real_info, family="qwen36", quant_formats=frozenset({"nvfp4-modelopt"}), prequantized_nvfp4=True)
    for phase in ("0", "3a", "3b", "3-MoE"):
        assert phase_decision(phase, other, PhaseDecision(phase, True, "x")) is None


def test_dense_gemma_has_no_moe_phase_override(real_info):
    dense = replace(real_info, is_moe=False, num_experts=0, experts_per_token=0,
                    quant_formats=frozenset({"nvfp4-modelopt"}), prequantized_nvfp4=True)
    assert phase_decision("3-MoE", dense, PhaseDecision("3-MoE", False, "not a mixture-of-experts model")) is None


# -- the resolved plan and `imp info` on a real checkpoint ----------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("gemma4-info"), "gemma4", seed=3)


def test_resolved_plan_and_imp_info_read_well(tiny):
    # the tiny model's sliding layers have head_dim 16 and its global ones 32: a 16-limited backend
    plugins = load_plugins(env={})
    plugins.attention.register(limited_backend("fa16", 16))
    resolved = load_settings(cli_flags={"runtime.device": "cpu"}, env={}, user_config=tiny / "none.toml")
    plan = dict(inspect_checkpoint(tiny, resolved, plugins).plan)
    assert plan["attention (sliding, 4 layers)"] == ("fa16 - sliding layer (head_dim 16, window 8): first backend "
                                                     "in the chain that serves it")
    assert plan["attention (full, 2 layers)"] == ("sdpa - global layer (head_dim 32, 4/1 heads, K=V): first "
                                                  "backend in the chain that serves it; declined fa16 "
                                                  "(head_dim <= 16)")
    text = describe_checkpoint(tiny, resolved, plugins)
    print("\n" + text)
    rows = {line.strip().split("  ")[0]: line.strip().split("  ")[-1].strip() for line in text.splitlines()
            if line.startswith("  ")}
    assert rows["family"] == "gemma4"
    # fp32 checkpoint: 2 global layers x (K+V) x 1 kv head x 32 dims x 4 bytes per token
    assert rows["per token"] == "512 B"
    # bf16: 256 B per token in the global layers; 4 rings x (K+V) x 2 kv heads x 16 dims x 8 slots x 2 B
    assert rows["kv cache (bf16)"] == ("256 B/token in 2 global layers + 4.0 KiB fixed in 4 sliding rings "
                                       "(the window's worth)")
    assert "skipped" in text  # the vision tower is not part of a text run
