"""The Gemma-4 GPU smoke script's CPU-only parts run here (the lead runs the real thing on the GPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.cli_util import REPO

SCRIPT = REPO / "tests" / "gpu" / "smoke_gemma4.py"


@pytest.mark.slow
def test_smoke_script_cpu_dry_run(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--cpu-dry-run"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "GEMMA4 SMOKE PASS" in proc.stdout
    res = json.loads((tmp_path / "smoke_gemma4.json").read_text())
    assert res["tiny_cpu_vs_cuda"]["passed"] and res["cli"]["returncode"] == 0
    full = res["full_shape_bf16"]
    assert full["preset"] == "gemma-4-mini" and full["decode_tok_s"] > 0 and full["all_tokens_finite"]


def test_synthetic_fallback_checkpoint_is_a_faithful_gemma4_checkpoint(tmp_path):
    """The fallback (no transformers needed to write it) loads in imp and in transformers alike."""
    import transformers as tf

    from imp_core.plugin.manager import load_plugins
    from imp_core.run.session import load_session
    from imp_core.settings.resolve import load_settings
    from tests.gemma4_factory import write_synthetic_checkpoint

    path = write_synthetic_checkpoint(tmp_path / "s", seed=3)
    resolved = load_settings(cli_flags={"runtime.device": "cpu", "runtime.dtype": "float32"}, env={},
                             user_config=tmp_path / "none.toml")
    model = load_session(path, resolved, load_plugins(env={}), progress=False).model
    ids = torch.randint(3, 512, (1, 30), generator=torch.Generator().manual_seed(2))
    ours = model.forward(ids, torch.arange(30), model.new_cache(1, 30))
    hf = tf.Gemma4ForConditionalGeneration.from_pretrained(path, attn_implementation="eager",
                                                           dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
    assert ref.abs().max() > 10
    assert (ours - ref).abs().max().item() < 1e-4


def test_decode_roofline_bytes_at_the_real_shape():
    from imp_gemma4.family import Gemma4Family
    from imp_gemma4.presets import GEMMA_4_26B_A4B
    from tests.gpu.smoke_gemma4 import decode_bytes

    family = Gemma4Family()
    cfg = family.config_from_dict(GEMMA_4_26B_A4B)
    need = decode_bytes(family, cfg, family.synthetic_spec(cfg), torch.bfloat16, 528)
    assert 7.5e9 < need["active_weights"] < 7.8e9  # ~7.6 GB active bf16 weights per token
    # 25 sliding layers x 528 tokens x (K+V) x 8 x 256 + 5 global x 528 x (K+V) x 2 x 512, bf16
    assert need["kv_read"] == (25 * 528 * 2 * 8 * 256 + 5 * 528 * 2 * 2 * 512) * 2
