"""The plugin manager: entry points, the IMP_PLUGINS allow-list, architecture claims.

Plugins come from the entry-point group ``imp.plugins`` (the built-in families too). A plugin
that fails to import is named in a warning and recorded; runs of other architectures go on,
and asking for an architecture nobody else claims names the broken plugin and its error.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Iterable, Sequence

import pluggy
from loguru import logger

from imp_core.plugin import hookspecs
from imp_core.errors import ArchitectureError, PluginError
from imp_core.plugin.attention_registry import AttentionRegistry
from imp_core.plugin.plan_types import ArchitectureSpec

ENTRY_POINT_GROUP = "imp.plugins"
CORE_PLUGIN_NAME = "imp-core"


@dataclass(frozen=True)
class PluginRecord:
    """One plugin as `imp plugins` shows it."""

    name: str
    module: str
    source: str  # distribution name and version, or "in-process"
    loaded: bool
    error: str = ""


@dataclass
class PluginSet:
    """The loaded plugins, the architectures they claim and the ones that failed."""

    pm: pluggy.PluginManager
    records: list[PluginRecord] = field(default_factory=list)
    architectures: list[ArchitectureSpec] = field(default_factory=list)
    attention: AttentionRegistry = field(default_factory=AttentionRegistry)

    @property
    def failures(self) -> dict[str, str]:
        return {r.name: r.error for r in self.records if not r.loaded and r.error}

    # -- architecture resolution -------------------------------------------------------
    def find(self, *, hf_architectures: Sequence[str] = (), model_types: Sequence[str] = (),
             gguf_architecture: str | None = None) -> ArchitectureSpec | None:
        """The first claim matching any of the checkpoint's spellings (architectures first)."""
        for name in hf_architectures:
            for spec in self.architectures:
                if name in spec.hf_architectures:
                    return spec
        for mt in model_types:
            for spec in self.architectures:
                if mt in spec.model_types:
                    return spec
        if gguf_architecture:
            for spec in self.architectures:
                if gguf_architecture in spec.gguf_architectures:
                    return spec
        return None

    def resolve(self, *, hf_architectures: Sequence[str] = (), model_types: Sequence[str] = (),
                gguf_architecture: str | None = None, where: str = "checkpoint") -> ArchitectureSpec:
        spec = self.find(hf_architectures=hf_architectures, model_types=model_types,
                         gguf_architecture=gguf_architecture)
        if spec is not None:
            return spec
        said = []
        if hf_architectures:
            said.append(f"architectures={list(hf_architectures)}")
        if model_types:
            said.append(f"model_type={'/'.join(model_types)}")
        if gguf_architecture:
            said.append(f"general.architecture={gguf_architecture!r}")
        known = sorted({n for s in self.architectures for n in (*s.hf_architectures, *s.gguf_architectures)})
        msg = (f"unknown architecture in {where} ({', '.join(said) or 'nothing declared'}): "
               f"no loaded plugin claims it; known: {', '.join(known) or 'none'}")
        if self.failures:
            broken = "; ".join(f"plugin '{n}' failed to import ({e})" for n, e in self.failures.items())
            msg += f"; note: {broken}"
        raise ArchitectureError(msg)

    def load_family(self, spec: ArchitectureSpec) -> Any:
        """Import and call the family builder of a claim."""
        module_name, _, attr = spec.builder.partition(":")
        try:
            module = importlib.import_module(module_name)
            builder = getattr(module, attr)
        except Exception as exc:  # noqa: BLE001 - any import failure is reported by name
            raise ArchitectureError(
                f"architecture '{spec.family}' is claimed by plugin '{spec.plugin}', but its builder "
                f"'{spec.builder}' failed to import: {type(exc).__name__}: {exc}") from None
        return builder()

    # -- hook helpers ------------------------------------------------------------------
    @property
    def hook(self):
        return self.pm.hook


def _hook_module_names(obj: Any) -> list[str]:
    return [n for n in dir(obj) if n.startswith("imp_")]


def _check_hooks(pm: pluggy.PluginManager, plugin: Any, name: str) -> None:
    """Reject ``imp_*`` functions that match no hookspec (a misspelled hookimpl)."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        pm.unregister(plugin)
        raise PluginError(f"plugin '{name}' implements an unknown hook: {exc}") from None
    known = {h for h in dir(hookspecs) if h.startswith("imp_")}
    for attr in _hook_module_names(plugin):
        fn = getattr(plugin, attr)
        if callable(fn) and attr not in known and not attr.startswith("imp_core"):
            pm.unregister(plugin)
            raise PluginError(f"plugin '{name}' defines '{attr}', which is not an imp hook "
                              f"(known hooks: {', '.join(sorted(known))})")


def _allow_list(env: dict[str, str] | None) -> set[str] | None:
    raw = (env if env is not None else os.environ).get("IMP_PLUGINS")
    if raw is None or not raw.strip():
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def _dist_source(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is not None:
        return f"{dist.metadata['Name']} {dist.version}"
    return "entry point"


def load_plugins(*, env: dict[str, str] | None = None, extra: Iterable[tuple[str, Any]] = (),
                 use_entry_points: bool = True) -> PluginSet:
    """Load the core plugin, the entry-point plugins (filtered by IMP_PLUGINS) and ``extra``.

    ``extra`` is a list of ``(name, module_or_object)`` registered in-process (tests use it).
    """
    from imp_core.plugin import builtin as builtin_plugin

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(builtin_plugin, name=CORE_PLUGIN_NAME)
    plugins = PluginSet(pm=pm)
    plugins.records.append(PluginRecord(CORE_PLUGIN_NAME, builtin_plugin.__name__, "imp (built in)", True))

    allow = _allow_list(env)
    candidates: list[tuple[str, str, str, Any]] = []  # name, module, source, loader
    if use_entry_points:
        eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
        seen: set[str] = set()
        for ep in eps:
            if ep.name in seen:
                continue
            seen.add(ep.name)
            candidates.append((ep.name, ep.value, _dist_source(ep), ep.load))
    for name, obj in extra:
        candidates.append((name, getattr(obj, "__name__", repr(obj)), "in-process", lambda o=obj: o))

    if allow is not None:
        unknown = allow - {c[0] for c in candidates}
        if unknown:
            logger.warning("IMP_PLUGINS names plugins that are not installed: {}", ", ".join(sorted(unknown)))

    for name, module, source, loader in candidates:
        if allow is not None and name not in allow:
            plugins.records.append(PluginRecord(name, module, source, False, ""))
            continue
        try:
            obj = loader()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break other runs
            err = f"{type(exc).__name__}: {exc}"
            logger.warning("plugin '{}' ({}) failed to import and is skipped: {}", name, module, err)
            plugins.records.append(PluginRecord(name, module, source, False, err))
            continue
        if pm.is_registered(obj):
            continue
        pm.register(obj, name=name)
        _check_hooks(pm, obj, name)
        plugins.records.append(PluginRecord(name, module, source, True))

    _collect_architectures(plugins)
    _collect_attention_backends(plugins)
    return plugins


def _collect_architectures(plugins: PluginSet) -> None:
    """Call each plugin's register hook with a callback bound to that plugin's name."""
    claimed: dict[str, str] = {}
    for impl in reversed(plugins.pm.hook.imp_register_architectures.get_hookimpls()):
        plugin_name = impl.plugin_name

        def register(*, family: str, builder: str, hf_architectures: Iterable[str] = (),
                     model_types: Iterable[str] = (), gguf_architectures: Iterable[str] = (),
                     _plugin: str = plugin_name) -> ArchitectureSpec:
            if ":" not in builder:
                raise PluginError(f"plugin '{_plugin}' registered family '{family}' with builder "
                                  f"{builder!r}; expected 'module:callable'")
            spec = ArchitectureSpec(family=family, builder=builder,
                                    hf_architectures=tuple(hf_architectures),
                                    model_types=tuple(model_types),
                                    gguf_architectures=tuple(gguf_architectures), plugin=_plugin)
            for name in (*spec.hf_architectures, *spec.model_types, *spec.gguf_architectures):
                if name in claimed and claimed[name] != _plugin:
                    logger.warning("'{}' is claimed by plugins '{}' and '{}'; '{}' wins",
                                   name, claimed[name], _plugin, claimed[name])
                claimed.setdefault(name, _plugin)
            plugins.architectures.append(spec)
            return spec

        try:
            impl.function(register=register)
        except PluginError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise PluginError(f"plugin '{plugin_name}' failed in imp_register_architectures: "
                              f"{type(exc).__name__}: {exc}") from None


def _collect_attention_backends(plugins: PluginSet) -> None:
    """Every plugin's attention backends, into the one registry (the core's last)."""
    for impl in reversed(plugins.pm.hook.imp_register_attention_backends.get_hookimpls()):
        try:
            impl.function(register=plugins.attention.register)
        except PluginError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise PluginError(f"plugin '{impl.plugin_name}' failed in imp_register_attention_backends: "
                              f"{type(exc).__name__}: {exc}") from None
