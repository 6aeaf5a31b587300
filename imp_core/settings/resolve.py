"""imp's settings: pydantic sections, layered loading, and where each value came from.

Precedence, lowest first (each source overrides the ones above it, key by key):

1. defaults                                   source "default"
2. the user file, ``<user config dir>/imp.toml``   "user file <path>"
3. ``./imp.toml`` in the working directory       "./imp.toml"
4. ``--config FILE`` (must exist)                 "--config <path>"
5. ``IMP_<SECTION>__<KEY>`` environment variables  "env IMP_SAMPLING__TOP_K"
6. ``--set section.key=value`` items, in order    "--set"
7. explicit CLI flags                             "flag"

Every value is validated as it is applied, so an error names the key, the source and the value.
Plugins' per-family defaults and ``generation_config.json`` are applied afterwards through
:meth:`ResolvedSettings.with_overrides` (callers check :meth:`ResolvedSettings.is_default` to
leave user choices alone).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import ValidationError

from imp_core.errors import ConfigError
from imp_core.settings.models import (
    AttentionSettings,
    BenchSettings,
    KvCacheSettings,
    LoggingSettings,
    MoeSettings,
    QuantSettings,
    RuntimeSettings,
    SamplingSettings,
    Settings,
    section_models,
)
from imp_core.settings.sources import (
    all_keys,
    check_key,
    env_items,
    parse_set_item,
    read_toml,
    split_key,
)

__all__ = [
    "AttentionSettings",
    "BenchSettings",
    "KvCacheSettings",
    "LoggingSettings",
    "MoeSettings",
    "QuantSettings",
    "ResolvedSettings",
    "RuntimeSettings",
    "SamplingSettings",
    "Settings",
    "all_keys",
    "load_settings",
    "parse_set_item",
    "user_config_path",
]

DEFAULT_SOURCE = "default"
USER_CONFIG_ENV = "IMP_USER_CONFIG"
LOCAL_CONFIG_NAME = "imp.toml"


def _expected(pydantic_message: str) -> str:
    """Turn pydantic's "Input should be a valid integer" into "expected a valid integer"."""
    for prefix in ("Value error, ", "Input should be "):
        if pydantic_message.startswith(prefix):
            rest = pydantic_message[len(prefix) :]
            return rest if prefix == "Value error, " else f"expected {rest}"
    return pydantic_message


def _assign(settings: Settings, dotted: str, value: Any, where: str) -> None:
    """Validate and store one value, or raise a one-line ConfigError naming key and source."""
    section, key = split_key(dotted)
    try:
        setattr(getattr(settings, section), key, value)
    except ValidationError as err:
        message = _expected(err.errors()[0]["msg"])
        shown = _render(value)
        raise ConfigError(f"invalid value {shown} for '{dotted}' in {where}: {message}") from None


def _render(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


@dataclass
class ResolvedSettings:
    """The final settings and, for every ``"section.key"``, the source that set its value."""

    settings: Settings
    sources: dict[str, str]

    def _checked(self, key: str) -> str:
        return check_key(*split_key(key), "a settings lookup")

    def value(self, key: str) -> Any:
        """The value of ``"section.key"``."""
        section, name = split_key(self._checked(key))
        return getattr(getattr(self.settings, section), name)

    def is_default(self, key: str) -> bool:
        """True when no file, env var, --set item or flag gave ``"section.key"`` a value."""
        return self.sources[self._checked(key)] == DEFAULT_SOURCE

    def with_overrides(self, values: Mapping[str, Any], source: str) -> ResolvedSettings:
        """A copy with ``values`` (``{"section.key": value}``) applied and recorded as ``source``.

        Only the given keys change; each value is validated. Used for per-family defaults and
        ``generation_config.json``: callers skip keys the user set (see :meth:`is_default`).
        """
        settings = self.settings.model_copy(deep=True)
        sources = dict(self.sources)
        for key, value in values.items():
            dotted = check_key(*split_key(key), source)
            _assign(settings, dotted, value, source)
            sources[dotted] = source
        return ResolvedSettings(settings, sources)

    def show(self, *, descriptions: bool = True) -> str:
        """The text of ``imp config show``: ``section.key = value    (source)``, by section."""
        rows = [(key, _render(self.value(key)), f"({self.sources[key]})") for key in all_keys()]
        key_width = max(len(r[0]) for r in rows)
        # the column where descriptions start: "key = value    (source)"
        line_width = key_width + 3 + max(len(r[1]) for r in rows) + 4 + max(len(r[2]) for r in rows)
        value_width = max(len(r[1]) for r in rows)
        by_key = {r[0]: r for r in rows}
        lines: list[str] = []
        for section, model in section_models().items():
            if lines:
                lines.append("")
            doc = (model.__doc__ or "").strip().splitlines()
            lines.append(f"[{section}]" + (f"  # {doc[0]}" if descriptions and doc else ""))
            for name, field in model.model_fields.items():
                key, value, source = by_key[f"{section}.{name}"]
                line = f"{key:<{key_width}} = {value:<{value_width}}    {source}"
                if descriptions and field.description:
                    line = f"{line:<{line_width}}  # {field.description}"
                lines.append(line.rstrip())
        return "\n".join(lines)


def user_config_path(
    user_config: str | Path | None = None, env: Mapping[str, str] | None = None
) -> Path:
    """The user settings file: ``user_config``, else $IMP_USER_CONFIG, else the platform dir."""
    if user_config is not None:
        return Path(user_config)
    env = os.environ if env is None else env
    if env.get(USER_CONFIG_ENV):
        return Path(env[USER_CONFIG_ENV])
    return Path(platformdirs.user_config_dir("imp")) / LOCAL_CONFIG_NAME


def _apply(resolved: ResolvedSettings, pairs: Iterable[tuple[str, Any, str]]) -> None:
    """Apply ``(dotted key, value, source)`` triples in place."""
    for dotted, value, source in pairs:
        _assign(resolved.settings, dotted, value, source)
        resolved.sources[dotted] = source


def _file_pairs(path: Path, where: str) -> list[tuple[str, Any, str]]:
    return [(dotted, value, where) for dotted, value in read_toml(path, where)]


def load_settings(
    *,
    config_file: str | Path | None = None,
    set_items: Sequence[str] = (),
    cli_flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user_config: Path | None = None,
) -> ResolvedSettings:
    """Resolve settings from every source (see the module docstring for the order).

    ``env=None`` reads ``os.environ``; ``cwd=None`` is the working directory (``./imp.toml`` and
    a relative ``config_file`` are looked up there); ``user_config=None`` is $IMP_USER_CONFIG or
    ``platformdirs.user_config_dir("imp")/imp.toml``. Missing user and ``./imp.toml`` files are
    skipped; a missing ``config_file`` is an error. ``cli_flags`` maps ``"section.key"`` to the
    value of a flag the user gave; None values are treated as "flag not given" and skipped.
    """
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else Path(cwd)
    resolved = ResolvedSettings(Settings(), {key: DEFAULT_SOURCE for key in all_keys()})

    user_path = user_config_path(user_config, env)
    if user_path.is_file():
        _apply(resolved, _file_pairs(user_path, f"user file {user_path}"))

    local_path = cwd / LOCAL_CONFIG_NAME
    if local_path.is_file():
        _apply(resolved, _file_pairs(local_path, f"./{LOCAL_CONFIG_NAME}"))

    if config_file is not None:
        given = Path(config_file)
        path = given if given.is_absolute() else cwd / given
        if not path.is_file():
            raise ConfigError(f"--config file not found: {given}")
        _apply(resolved, _file_pairs(path, f"--config {given}"))

    _apply(resolved, [(dotted, value, f"env {name}") for name, dotted, value in env_items(env)])
    _apply(resolved, [(*parse_set_item(item), "--set") for item in set_items])
    for key, value in (cli_flags or {}).items():
        if value is None:
            continue
        dotted = check_key(*split_key(key), "flag")
        _assign(resolved.settings, dotted, value, flag_name(dotted))
        resolved.sources[dotted] = "flag"
    return resolved


def flag_name(dotted: str) -> str:
    """The command-line flag of a setting: ``runtime.max_tokens`` -> ``--max-tokens``."""
    return "--" + split_key(dotted)[1].replace("_", "-")
