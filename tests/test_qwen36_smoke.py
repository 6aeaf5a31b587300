"""The GPU smoke script's CPU-only parts run here (the lead runs the real thing on the GPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.cli_util import REPO

SCRIPT = REPO / "tests" / "gpu" / "smoke_qwen36.py"


@pytest.mark.slow
def test_smoke_script_cpu_dry_run(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--cpu-dry-run"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "QWEN36 SMOKE PASS" in proc.stdout
    res = json.loads((tmp_path / "smoke_qwen36.json").read_text())
    assert res["tiny_cpu_vs_cuda"]["passed"] and res["cli"]["returncode"] == 0
    full = res["full_shape_bf16"]
    assert full["preset"] == "qwen3.6-mini" and full["decode_tok_s"] > 0 and full["all_tokens_finite"]


def test_synthetic_fallback_checkpoint_loads_and_runs(tmp_path):
    from tests.gpu.smoke_qwen36 import decode_bytes, write_synthetic_checkpoint
    from imp_core.plugin.manager import load_plugins
    from imp_core.run.session import load_session
    from imp_core.settings.resolve import load_settings
    from imp_qwen36.family import Qwen36Family
    from imp_qwen36.presets import QWEN3_6_35B_A3B

    path = write_synthetic_checkpoint(tmp_path / "s")
    resolved = load_settings(cli_flags={"runtime.device": "cpu", "runtime.dtype": "float32"}, env={},
                             user_config=tmp_path / "none.toml")
    model = load_session(path, resolved, load_plugins(env={}), progress=False).model
    logits = model.forward(torch.arange(3, 83)[None], torch.arange(80), model.new_cache(1, 80), last_only=True)
    assert torch.isfinite(logits).all()
    # the decode roofline at the real shape: ~5.9 GB of active bf16 weights (transformers' figure: ~6 GB)
    family = Qwen36Family()
    cfg = family.config_from_dict(QWEN3_6_35B_A3B)
    need = decode_bytes(family, cfg, family.synthetic_spec(cfg), torch.bfloat16, 528)
    assert 5.8e9 < need["active_weights"] < 6.0e9
