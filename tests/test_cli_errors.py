"""Bad input gets one clear error line naming the file or key, a non-zero exit, no traceback."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.cli_util import assert_one_line_error, run_imp
from tests.mistral_factory import write_checkpoint


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("good"), "mistral3", seed=2)


def _copy(good, tmp_path, name="ck"):
    dest = tmp_path / name
    shutil.copytree(good, dest)
    return dest


def test_missing_path(tmp_path):
    assert_one_line_error(run_imp("run", "--model", str(tmp_path / "nope"), "--prompt", "x"),
                          "nope", "no such file or directory")


def test_directory_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_imp("info", "--model", str(tmp_path / "empty")), "no config.json")


def test_truncated_safetensors(good, tmp_path):
    ck = _copy(good, tmp_path)
    f = ck / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert_one_line_error(run_imp("run", "--model", str(ck), "--prompt", "x"), "model.safetensors", "truncated")


def test_corrupt_safetensors(good, tmp_path):
    ck = _copy(good, tmp_path)
    f = ck / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:40] = b"\xff" * 32
    f.write_bytes(bytes(data))
    assert_one_line_error(run_imp("run", "--model", str(ck), "--prompt", "x"), "model.safetensors", "corrupt")


def test_unknown_architecture(good, tmp_path):
    ck = _copy(good, tmp_path)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["architectures"] = ["FooForCausalLM"]
    cfg["model_type"] = "foo"
    cfg["text_config"]["model_type"] = "foo"
    (ck / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(run_imp("run", "--model", str(ck), "--prompt", "x"),
                          "unknown architecture", "FooForCausalLM")


def test_bad_set_key(good):
    line = assert_one_line_error(run_imp("run", "--model", str(good), "--prompt", "x", "--set", "sampling.top_kk=3"),
                                 "sampling.top_kk", "--set")
    assert "did you mean 'sampling.top_k'" in line


def test_bad_config_file_key(good, tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[runtime]\ndevise = 'cpu'\n")
    assert_one_line_error(run_imp("run", "--model", str(good), "--prompt", "x", "--config", str(cfg)),
                          "runtime.devise", "bad.toml", "runtime.device")


def test_prompt_longer_than_context(good):
    proc = run_imp("run", "--model", str(good), "--prompt", "the quick brown fox " * 40, "--context", "32")
    assert_one_line_error(proc, "prompt is", "context", "32")
    assert proc.stdout == ""


def test_missing_tokenizer(good, tmp_path):
    ck = _copy(good, tmp_path)
    (ck / "tokenizer.json").unlink()
    assert_one_line_error(run_imp("run", "--model", str(ck), "--prompt", "x"), "tokenizer.json")


def test_quantized_checkpoint_not_read_as_dense(good, tmp_path):
    ck = _copy(good, tmp_path)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq"}
    (ck / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(run_imp("run", "--model", str(ck), "--prompt", "x"), "awq")


def test_no_prompt(good):
    assert_one_line_error(run_imp("run", "--model", str(good), stdin=""), "no prompt")


def test_cuda_requested_without_cuda(good):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_one_line_error(run_imp("run", "--model", str(good), "--prompt", "x", "--device", "cuda"),
                          "runtime.device", "cuda")


def test_good_run_streams_text_and_reports_speed(good):
    proc = run_imp("run", "--model", str(good), "--prompt", "Tell me a story", "-n", "12", "--seed", "4")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("\n")
    stats = [ln for ln in proc.stderr.splitlines() if ln.startswith("prompt ")]
    assert len(stats) == 1 and "prefill" in stats[0] and "decode" in stats[0] and "tok/s" in stats[0]
    again = run_imp("run", "--model", str(good), "--prompt", "Tell me a story", "-n", "12", "--seed", "4")
    assert again.stdout == proc.stdout  # same seed, same output


def test_prompt_from_stdin_and_raw(good):
    proc = run_imp("run", "--model", str(good), "--raw", "-n", "4", "--temperature", "0", stdin="hello world\n")
    assert proc.returncode == 0, proc.stderr
    assert "raw (--raw)" in proc.stderr


def test_config_show_lists_sources(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[sampling]\ntop_k = 7\n")
    proc = run_imp("config", "show", "--config", str(cfg), "--set", "runtime.device=cpu",
                   env={"IMP_SAMPLING__TOP_P": "0.5"})
    assert proc.returncode == 0, proc.stderr
    assert "sampling.top_k" in proc.stdout and "--config" in proc.stdout
    assert "env IMP_SAMPLING__TOP_P" in proc.stdout and "--set" in proc.stdout


def test_info_describes_without_reading_weights(good):
    proc = run_imp("info", "--model", str(good))
    assert proc.returncode == 0, proc.stderr
    for needle in ("Mistral3ForConditionalGeneration", "family", "per token", "phase 3-MoE", "decode fast path"):
        assert needle in proc.stdout
