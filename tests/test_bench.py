"""`imp bench` on the CPU: presets from the family plugins, every mini preset's report and JSON,
a packed format mix, a checkpoint, and the argument errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from imp_core.cli.app import app
from tests.mistral_factory import write_checkpoint

QUICK = ["--device", "cpu", "--prefill", "8", "--decode", "2", "--context", "16", "--repeat", "1"]


def _bench(*args):
    return CliRunner().invoke(app, ["bench", *args])


def test_list_names_every_family_preset_and_format():
    res = _bench("--list")
    assert res.exit_code == 0, res.output
    for name in ("qwen3.6-35b-a3b", "qwen3.6-mini", "gemma-4-26b-a4b", "gemma-4-mini", "mistral-small-3.2-24b",
                 "mistral-mini"):
        assert name in res.output
    assert "nvfp4" in res.output and "gguf-q4_k_m" in res.output


@pytest.mark.parametrize("preset,fmt", [("qwen3.6-mini", "bf16"), ("gemma-4-mini", "bf16"), ("mistral-mini", "bf16"),
                                        ("mistral-mini", "nvfp4")])
def test_mini_presets_report_and_json(tmp_path, preset, fmt):
    out = tmp_path / "bench.json"
    res = _bench("--preset", preset, "--format", fmt, *QUICK, "--json", str(out))
    assert res.exit_code == 0, res.output
    assert "decode   context" in res.output and "of copy bw" in res.output
    report = json.loads(out.read_text())
    assert report["args"]["preset"] == preset and report["args"]["format"] == fmt
    assert dict(report["plan"])["decode path"].startswith("reference - ")
    (decode,) = report["decode"]
    assert decode["context"] == 16 and decode["tok_s_median"] > 0
    # a step reads the weights of the token plus the 16 cached tokens' K/V (and any recurrent state)
    assert decode["bytes_per_step"] > report["weight_bytes_per_token"] > 0
    assert 0 < decode["fraction_of_copy_bw"] < 1
    assert report["prefill"][0]["tokens"] == 8 and report["prefill"][0]["tok_s"] > 0
    assert report["machine"]["torch"] and report["copy_bw_GB_s"] > 0


def test_packed_mix_reads_fewer_weight_bytes(tmp_path):
    sizes = {}
    for fmt in ("bf16", "nvfp4"):
        out = tmp_path / f"{fmt}.json"
        assert _bench("--preset", "mistral-mini", "--format", fmt, *QUICK, "--json", str(out)).exit_code == 0
        sizes[fmt] = json.loads(out.read_text())["weight_bytes_per_token"]
    assert sizes["nvfp4"] < 0.5 * sizes["bf16"]


def test_checkpoint_and_profile(tmp_path):
    path = write_checkpoint(tmp_path / "m", "mistral", seed=1)
    res = _bench("--model", str(path), *QUICK, "--profile")
    assert res.exit_code == 0, res.output
    assert "profile of one decode step" in res.output and "aten::" in res.output


@pytest.mark.parametrize("args,message", [
    (["--preset", "no-such-model"], "unknown preset 'no-such-model'"),
    ([], "pass exactly one of --model PATH and --preset NAME"),
    (["--preset", "mistral-mini", "--format", "int3"], "has no format 'int3'"),
    (["--preset", "mistral-mini", "--prefill", "8,x"], "--prefill: expected comma-separated token counts"),
    (["--preset", "mistral-mini", "--path", "warp"], "--path must be auto, fast or reference"),
])
def test_bad_arguments_are_one_line(args, message):
    res = _bench(*args, "--device", "cpu")
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output


def test_peer_transformers_on_the_same_shapes(tmp_path):
    out = tmp_path / "peer.json"
    res = _bench("--preset", "qwen3.6-mini", *QUICK, "--peer", "transformers", "--json", str(out))
    assert res.exit_code == 0, res.output
    peer = json.loads(out.read_text())["peers"]["transformers"]
    assert peer["class"] == "Qwen3_5MoeForCausalLM" and peer["transformers"]
    (p,) = peer["prefill"]
    assert p["tokens"] == 8 and p["tok_s"] > 0 and p["imp_ratio"] > 0
    assert peer["decode"]["tok_s_median"] > 0 and peer["decode"]["compiled"] is False
    assert "peer transformers" in res.output and "imp/transformers" in res.output


@pytest.mark.parametrize("args,expected", [
    (["--preset", "mistral-mini", "--peer", "vllm"], "the only peer is 'transformers'"),
    (["--peer", "transformers"], "needs --preset"),
])
def test_peer_errors(tmp_path, args, expected):
    if "--preset" not in args:
        args = ["--model", str(write_checkpoint(tmp_path / "m", "mistral", seed=1)), *args]
    res = _bench(*args, *QUICK)
    assert res.exit_code != 0 and expected in res.output and "Traceback" not in res.output
