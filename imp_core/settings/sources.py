"""Reading settings from their sources: TOML files, ``IMP_<SECTION>__<KEY>`` env vars, ``--set``.

Each reader returns ``(key, value)`` pairs with ``key`` a checked ``"section.key"`` name, so an
unknown name is reported with the source it came from and the nearest valid name. Validating
the *values* is left to the pydantic models (``imp_core.settings.resolve`` applies the pairs).
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from imp_core.errors import ConfigError
from imp_core.settings.models import section_models

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ENV_PREFIX = "IMP_"
ENV_SEPARATOR = "__"
SET_FORM = "section.key=value"


def all_keys() -> list[str]:
    """Every settings key as ``"section.key"``, in declaration order."""
    return [
        f"{section}.{key}"
        for section, model in section_models().items()
        for key in model.model_fields
    ]


def _suggestion(name: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


def check_key(section: str, key: str, where: str) -> str:
    """Return ``"section.key"`` if it names a setting, else raise a ConfigError naming ``where``."""
    models = section_models()
    if section not in models:
        raise ConfigError(
            f"unknown settings section '{section}' in {where}" + _suggestion(section, list(models))
        )
    if key not in models[section].model_fields:
        dotted = f"{section}.{key}"
        same_leaf = [k for k in all_keys() if k.split(".", 1)[1] == key]
        hint = f"; did you mean '{same_leaf[0]}'?" if same_leaf else _suggestion(dotted, all_keys())
        if not models[section].model_fields and not hint:
            hint = f"; section '{section}' has no settings yet"
        raise ConfigError(f"unknown settings key '{dotted}' in {where}{hint}")
    return f"{section}.{key}"


def split_key(dotted: str) -> tuple[str, str]:
    """``"sampling.top_k"`` -> ``("sampling", "top_k")``."""
    section, _, key = dotted.partition(".")
    return section, key


def parse_scalar(text: str) -> Any:
    """Parse a string like a TOML scalar: int, float, bool, ``none`` -> None, else the string.

    Quoted strings lose their quotes (``"'cpu'"`` -> ``cpu``); anything that is not a TOML
    int/float/bool/string (dates, arrays, bare words like ``cuda:0``) stays the raw text.
    """
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered == "none":
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        value = tomllib.loads(f"v = {stripped}")["v"]
    except (tomllib.TOMLDecodeError, KeyError):
        return stripped
    if isinstance(value, (bool, int, float, str)):
        return value
    return stripped


def _accepts(annotation: Any, wanted: type) -> bool:
    if annotation is wanted:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return wanted in typing.get_args(annotation)
    return False


def parse_value_for(dotted: str, text: str) -> Any:
    """Parse the string ``text`` for the setting ``dotted`` (a checked key).

    Like :func:`parse_scalar`, except that a string setting keeps the text when it happens to
    look like a number or bool (``attention.backend=1`` stays ``"1"``).
    """
    value = parse_scalar(text)
    section, key = split_key(dotted)
    annotation = section_models()[section].model_fields[key].annotation
    if value is None and _accepts(annotation, type(None)):
        return None
    if not isinstance(value, str) and _accepts(annotation, str):
        return text.strip()
    return value


def parse_set_item(item: str) -> tuple[str, Any]:
    """Parse one ``--set section.key=value`` item into ``("section.key", typed value)``."""
    name, sep, text = item.partition("=")
    name = name.strip()
    section, dot, key = name.partition(".")
    if not sep or not dot or not section or not key:
        raise ConfigError(f"bad --set item '{item}': expected the form {SET_FORM}")
    dotted = check_key(section, key, "--set")
    return dotted, parse_value_for(dotted, text)


def env_items(env: Mapping[str, str]) -> Iterator[tuple[str, str, Any]]:
    """Yield ``(env var name, "section.key", value)`` for every ``IMP_<SECTION>__<KEY>`` var.

    ``IMP_*`` names without ``__`` (IMP_PLUGINS, IMP_USER_CONFIG, ...) are not settings and are
    skipped. Variables are taken in sorted order so the result does not depend on the OS.
    """
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or ENV_SEPARATOR not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].partition(ENV_SEPARATOR)
        dotted = check_key(section.lower(), key.lower(), f"env {name}")
        yield name, dotted, parse_value_for(dotted, env[name])


def read_toml(path: Path, where: str) -> list[tuple[str, Any]]:
    """Read a settings TOML file into ``("section.key", value)`` pairs (keys checked)."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"cannot parse TOML file {path}: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"cannot parse TOML file {path}: not UTF-8 text (byte {err.start})") from None
    except RecursionError:
        raise ConfigError(f"cannot parse TOML file {path}: nested too deeply") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from None
    pairs: list[tuple[str, Any]] = []
    for section, table in data.items():
        if not isinstance(table, dict):
            same_leaf = [k for k in all_keys() if k.split(".", 1)[1] == section]
            hint = f"; did you mean '{same_leaf[0]}'?" if same_leaf else ""
            raise ConfigError(
                f"'{section}' in {where} is not inside a [section] table{hint}"
            )
        for key, value in table.items():
            pairs.append((check_key(section, key, where), value))
    return pairs
