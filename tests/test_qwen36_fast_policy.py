"""Qwen3.6's answer to the fast-path predicate: the DeltaNet kernel's head sizes."""

from __future__ import annotations

import torch

from imp_core.plugin import policy
from imp_core.plugin.manager import load_plugins
from imp_core.settings.resolve import Settings
from imp_qwen36.family import Qwen36Family
from imp_qwen36.presets import QWEN3_6_35B_A3B, QWEN3_6_MINI


def _reasons(preset: dict) -> list[str]:
    family = Qwen36Family()
    info = family.model_info(family.config_from_dict(preset), None)
    return policy.fast_path_reasons(load_plugins(env={}).hook, info, Settings(), "cuda", dtype=torch.bfloat16)


def test_published_shapes_are_eligible():
    assert _reasons(QWEN3_6_35B_A3B) == [] and _reasons(QWEN3_6_MINI) == []


def test_deltanet_heads_the_kernel_cannot_take_are_vetoed_with_the_sizes():
    reasons = _reasons({**QWEN3_6_MINI, "linear_key_head_dim": 32, "linear_value_head_dim": 32})
    assert reasons == ["the DeltaNet decode kernel needs key heads of 128 and value heads of a multiple of 32 "
                       "up to 256 (this model: 32 / 32)"]
