"""The presets and format mixes the installed family plugins offer (``Family.presets`` /
``Family.format_mixes``): the core names no family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imp_core.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    name: str
    family: Any  # the Family object
    config: dict[str, Any]

    @property
    def formats(self) -> list[str]:
        return list(self.family.format_mixes()) or ["bf16"]


def all_presets(plugins) -> list[Preset]:
    out, seen = [], set()
    for spec in plugins.architectures:
        if spec.family in seen:
            continue
        seen.add(spec.family)
        family = plugins.load_family(spec)
        out += [Preset(name, family, cfg) for name, cfg in family.presets().items()]
    return out


def find_preset(plugins, name: str) -> Preset:
    presets = all_presets(plugins)
    for p in presets:
        if p.name == name:
            return p
    raise ConfigError(f"unknown preset '{name}' (known: {', '.join(p.name for p in presets) or 'none'}; "
                      f"imp bench --list)")
