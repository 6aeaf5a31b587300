"""Logging: stderr levels, file sink, idempotent set-up, and the resolved-plan block."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from loguru import logger

from imp_core.errors import ConfigError
from imp_core.logging import format_plan, log_plan, remove_imp_sinks, setup_logging

MESSAGES = {"DEBUG": "dbg-message", "INFO": "info-message", "WARNING": "warn-message",
            "ERROR": "err-message"}


@pytest.fixture(autouse=True)
def _clean_sinks():
    yield
    remove_imp_sinks()


def _emit_all() -> None:
    logger.debug(MESSAGES["DEBUG"])
    logger.info(MESSAGES["INFO"])
    logger.warning(MESSAGES["WARNING"])
    logger.error(MESSAGES["ERROR"])


def _shown(err: str) -> list[str]:
    return [level for level, text in MESSAGES.items() if text in err]


@pytest.mark.parametrize(
    "kwargs,shown",
    [
        ({}, ["INFO", "WARNING", "ERROR"]),
        ({"level": "debug"}, ["DEBUG", "INFO", "WARNING", "ERROR"]),
        ({"level": "warning"}, ["WARNING", "ERROR"]),
        ({"level": "ERROR"}, ["ERROR"]),
        ({"verbose": True}, ["DEBUG", "INFO", "WARNING", "ERROR"]),
        ({"level": "error", "verbose": True}, ["DEBUG", "INFO", "WARNING", "ERROR"]),
        ({"quiet": True}, ["WARNING", "ERROR"]),
    ],
)
def test_stderr_levels(capsys: pytest.CaptureFixture[str], kwargs: dict, shown: list[str]) -> None:
    setup_logging(**kwargs)
    _emit_all()
    captured = capsys.readouterr()
    assert _shown(captured.err) == shown
    assert captured.out == ""  # stdout stays clean for generated text


def test_stderr_format_is_short_and_plain_when_not_a_tty(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging()
    logger.info("hello there")
    err = capsys.readouterr().err
    assert re.fullmatch(r"imp  INFO +hello there\n", err), err
    assert "\x1b[" not in err


def test_setup_is_idempotent(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging()
    setup_logging()
    setup_logging(level="debug")
    logger.info("once")
    assert capsys.readouterr().err.count("once") == 1


def test_file_sink_gets_debug_with_timestamps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log_file = tmp_path / "logs" / "imp.log"
    setup_logging(file=log_file, quiet=True)
    _emit_all()
    remove_imp_sinks()  # closes the file
    text = log_file.read_text()
    assert all(message in text for message in MESSAGES.values())
    debug_line = next(line for line in text.splitlines() if MESSAGES["DEBUG"] in line)
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} DEBUG ", debug_line), debug_line
    assert _shown(capsys.readouterr().err) == ["WARNING", "ERROR"]


def test_bad_arguments_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown log level 'loud'"):
        setup_logging("loud")
    with pytest.raises(ConfigError, match="--verbose and --quiet"):
        setup_logging(verbose=True, quiet=True)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=f"cannot open log file {re.escape(str(blocker))}"):
        setup_logging(file=blocker / "imp.log")


def test_format_plan_aligns_values() -> None:
    items = [
        ("architecture", "MistralForCausalLM via plugin mistral"),
        ("layer 5 attention", "sdpa (gemma4 declines numba-decode: head_dim 512)"),
        ("dtype", "bfloat16"),
    ]
    text = format_plan("resolved plan", items)
    lines = text.split("\n")
    assert lines[0] == "resolved plan"
    assert len(lines) == 1 + len(items)
    value_columns = set()
    for line, (key, value) in zip(lines[1:], items):
        assert line.startswith(f"  {key}:")
        assert line.endswith(value)
        value_columns.add(len(line) - len(value))
        # after "  key:" comes only padding, then the value
        assert line[len(key) + 3 :].lstrip() == value
    assert value_columns == {2 + len("layer 5 attention:") + 1}


def test_format_plan_multiline_values_and_empty() -> None:
    text = format_plan("plan", [("a", "first\nsecond"), ("bbb", "x")])
    assert text.split("\n") == ["plan", "  a:   first", "       second", "  bbb: x"]
    assert format_plan("plan", []) == "plan\n  (empty)"


def test_log_plan_logs_one_info_record() -> None:
    records = []
    sink_id = logger.add(lambda message: records.append(message.record), level="DEBUG")
    try:
        items = [("architecture", "X via plugin y"), ("kv cache", "{braces} <tags> kept")]
        log_plan("resolved plan", items)
    finally:
        logger.remove(sink_id)
    assert len(records) == 1
    assert records[0]["level"].name == "INFO"
    assert records[0]["message"] == format_plan("resolved plan", items)
    assert records[0]["function"] == "test_log_plan_logs_one_info_record"  # caller, not log_plan
