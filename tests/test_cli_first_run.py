"""What a first run shows: --version, --system, --prompt-file, the plan before the weights load,
progress lines off a terminal, the demo's noise notice, settings errors naming the flag or the
file, a closed stdout pipe, and set-up that skips pip when nothing changed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from imp_mistral.demo import write_demo_checkpoint
from tests.cli_inproc import invoke_imp
from tests.cli_util import REPO
from tests.hostile_util import assert_exit_2


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_checkpoint(tmp_path_factory.mktemp("demo") / "demo")


def _prompt_line(stderr: str) -> str:
    return next(ln for ln in stderr.splitlines() if ln.strip().startswith("prompt:"))


def test_version():
    proc = invoke_imp("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("imp ") and proc.stdout.split()[1][0].isdigit()


def test_system_message_goes_through_the_chat_template(demo):
    plain = invoke_imp("run", "--model", str(demo), "-p", "hello", "-n", "1", "--seed", "1")
    system = invoke_imp("run", "--model", str(demo), "-p", "hello", "-n", "1", "--seed", "1",
                        "--system", "You answer in French.")
    assert plain.returncode == 0 and system.returncode == 0, system.stderr
    assert "chat template with a system message" in _prompt_line(system.stderr)
    n_plain, n_system = (int(_prompt_line(p.stderr).split()[1]) for p in (plain, system))
    assert n_system > n_plain


def test_system_text_in_raw_mode(demo):
    proc = invoke_imp("run", "--model", str(demo), "-p", "hello", "-n", "1", "--raw", "--system", "Be brief.")
    assert proc.returncode == 0 and "--system text before the prompt" in _prompt_line(proc.stderr)


def test_prompt_file(demo, tmp_path):
    f = tmp_path / "prompt.txt"
    f.write_text("Write a haiku about the sea.", encoding="utf-8")
    from_file = invoke_imp("run", "--model", str(demo), "--prompt-file", str(f), "-n", "1")
    inline = invoke_imp("run", "--model", str(demo), "-p", "Write a haiku about the sea.", "-n", "1")
    assert from_file.returncode == 0, from_file.stderr
    assert _prompt_line(from_file.stderr) == _prompt_line(inline.stderr)


def test_prompt_file_errors(demo, tmp_path):
    assert_exit_2("run", "--model", str(demo), "--prompt-file", str(tmp_path / "nope.txt"),
                  needles=("--prompt-file", "nope.txt", "no such file"))
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    assert_exit_2("run", "--model", str(demo), "--prompt-file", str(bad), needles=("latin1.txt", "not UTF-8"))
    assert_exit_2("run", "--model", str(demo), "--prompt-file", str(bad), "-p", "x",
                  needles=("--prompt and --prompt-file",))


def test_plan_is_logged_before_the_weights_load_with_progress_lines(demo):
    proc = invoke_imp("run", "--model", str(demo), "-p", "hi", "-n", "1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    plan = next(i for i, ln in enumerate(lines) if "resolved plan" in ln)
    progress = [i for i, ln in enumerate(lines) if "loading weights:" in ln]
    assert progress and plan < progress[0], proc.stderr
    assert "loading weights: 100%" in lines[progress[-1]] and len(progress) <= 4


def test_demo_noise_notice_on_every_run(demo):
    for args in ([], ["-q"]):
        proc = invoke_imp("run", "--model", str(demo), "-p", "hi", "-n", "1", *args)
        assert proc.returncode == 0 and "demo checkpoint: random weights: the text is noise" in proc.stderr
    info = invoke_imp("info", "--model", str(demo))
    assert "the text is noise" in info.stdout


def test_non_utf8_toml_names_the_file(demo, tmp_path):
    cfg = tmp_path / "latin1.toml"
    cfg.write_bytes(b'[runtime]\ndevice = "c\xe9pu"\n')
    assert_exit_2("run", "--model", str(demo), "-p", "x", "--config", str(cfg),
                  needles=(str(cfg), "not UTF-8"))


def test_range_errors_name_the_flag_or_the_key(demo):
    line = assert_exit_2("run", "--model", str(demo), "-p", "x", "--max-tokens", "-1",
                         needles=("--max-tokens", "greater than 0"))
    assert "in flag" not in line
    assert_exit_2("run", "--model", str(demo), "-p", "x", "--set", "runtime.max_tokens=-1",
                  needles=("'runtime.max_tokens'", "--set"))


def test_closed_stdout_pipe_exits_quietly(demo):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMP_")}
    env["IMP_USER_CONFIG"] = str(REPO / "tests" / "no-such-user-config.toml")
    proc = subprocess.Popen([sys.executable, "-m", "imp_core.cli", "run", "--model", str(demo), "-p", "hi",
                             "-n", "50"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader is gone before the first token is written
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 141, (proc.returncode, err)
    assert "Traceback" not in err and "error" not in err.lower() and "Exception" not in err, err


def test_setup_skips_pip_when_up_to_date(tmp_path):
    (tmp_path / ".venv").mkdir()
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    script = f"""set -eu
pip_q() {{ echo "pip $*" >> pip.log; }}
. {REPO / 'scripts' / 'pip_stamp.sh'}
pip_once imp -e .
pip_once imp -e .
echo "# changed" >> pyproject.toml
pip_once imp -e .
pip_once imp -e '.[test]'
"""
    subprocess.run(["bash", "-c", script], cwd=tmp_path, check=True)
    assert (tmp_path / "pip.log").read_text().splitlines() == ["pip -e .", "pip -e .", "pip -e .[test]"]
