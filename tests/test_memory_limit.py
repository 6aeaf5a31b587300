"""runtime.memory_limit: parsing, and the free memory the planners see under a limit."""

from __future__ import annotations

import pytest
import torch

from imp_core import device_memory
from imp_core.settings.models import RuntimeSettings
from imp_core.units import parse_bytes


def test_sizes_parse_in_binary_and_decimal_units():
    assert parse_bytes("24GiB") == parse_bytes("24G") == 24 * 2 ** 30
    assert parse_bytes("24 GB") == 24 * 10 ** 9
    assert parse_bytes("1.5 MiB") == 3 * 2 ** 19
    assert parse_bytes(4096) == 4096
    for bad in ("lots", "-3GiB", "0", "12 parsecs", "GiB"):
        with pytest.raises(ValueError, match="size|positive"):
            parse_bytes(bad)


def test_the_setting_takes_a_size_or_none():
    assert RuntimeSettings(memory_limit="24GiB").memory_limit == 24 * 2 ** 30
    assert RuntimeSettings().memory_limit is None
    assert RuntimeSettings(memory_limit="none").memory_limit is None
    with pytest.raises(ValueError, match="memory_limit"):
        RuntimeSettings(memory_limit="a lot")


def test_free_memory_under_a_limit_is_the_limit_less_what_is_held(monkeypatch):
    dev = torch.device("cuda:0")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda idx: (100 * 2 ** 30, 140 * 2 ** 30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda idx: 5 * 2 ** 30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda idx: type("P", (), {"total_memory": 140 * 2 ** 30}))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda idx: "a test GPU")
    fractions = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, idx: fractions.append(f))
    monkeypatch.setattr(device_memory, "_LIMITS", {})
    assert device_memory.free_bytes(dev) == 100 * 2 ** 30
    device_memory.apply_limit(dev, 24 * 2 ** 30)
    assert fractions == [24 / 140]
    assert device_memory.free_bytes(dev) == 19 * 2 ** 30
    with pytest.raises(Exception, match="memory_limit is 200.0 GiB but a test GPU has 140.0 GiB"):
        device_memory.apply_limit(dev, 200 * 2 ** 30)
    device_memory.apply_limit(dev, None)
    assert device_memory.free_bytes(dev) == 100 * 2 ** 30 and fractions[-1] == 1.0


def test_cpu_ignores_the_limit():
    device_memory.apply_limit(torch.device("cpu"), 2 ** 30)
    free = device_memory.free_bytes(torch.device("cpu"))
    assert free is None or free > 0
