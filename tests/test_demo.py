"""The README's main job: the demo checkpoint is written in the real layout and runs."""

from __future__ import annotations

import json

from imp_core.checkpoint.open import open_checkpoint
from imp_mistral.demo import write_demo_checkpoint
from tests.cli_util import run_imp


def test_demo_checkpoint_is_the_real_layout_and_runs(tmp_path):
    path = write_demo_checkpoint(tmp_path / "demo")
    ck = open_checkpoint(path)
    assert ck.hf_architectures == ["Mistral3ForConditionalGeneration"]
    assert "language_model.model.layers.0.self_attn.q_proj.weight" in ck.tensors
    assert json.loads((path / "config.json").read_text())["text_config"]["model_type"] == "mistral"
    proc = run_imp("run", "--model", str(path), "--prompt", "Write a haiku about the sea.", "-n", "8", "--seed", "0")
    assert proc.returncode == 0, proc.stderr
    assert "chat template" in proc.stderr and "generated" in proc.stderr


def test_unimplemented_settings_are_refused_not_ignored(tmp_path):
    path = write_demo_checkpoint(tmp_path / "demo")
    proc = run_imp("info", "--model", str(path), "--set", "kv_cache.dtype=fp8")
    assert proc.returncode == 2 and "kv_cache.dtype 'fp8' is not supported yet" in proc.stderr
