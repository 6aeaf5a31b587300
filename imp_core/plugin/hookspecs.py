"""The plugin contract: every hook a plugin may implement.

A plugin is a module (or object) with functions decorated by ``imp_core.plugin.hookspecs.hookimpl``
and named exactly like a spec below; ``PluginManager.check_pending()`` turns a misspelled
``imp_*`` hookimpl into an error. A hookimpl may take any subset of a spec's parameters (pluggy
passes only the ones it names). Built-in families are plugins loaded from the entry-point group
``imp.plugins``, exactly like third-party ones. The core's own defaults are registered as the
plugin ``imp-core`` with ``trylast=True``, so any family plugin answers first.

Calling order: pluggy calls implementations last-registered first; for ``firstresult`` hooks
the first non-None answer wins. docs/architecture.md has a runnable example of every hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from imp_core.checkpoint.base import Checkpoint
    from imp_core.plugin.attention_registry import AttentionBackend, AttentionRegistry
    from imp_core.plugin.plan_types import (
        ArchitectureSpec,
        AttentionChoice,
        AttentionLayerSpec,
        ModelInfo,
        PhaseDecision,
        SettingOverride,
    )
    from imp_core.quant.plan import QuantPlan
    from imp_core.text.output_parser import OutputParser
    from imp_core.settings.resolve import Settings

PROJECT = "imp"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def imp_register_architectures(register: Callable[..., "ArchitectureSpec"]) -> None:
    """Register the architectures this plugin claims.

    Called once, right after the plugins are loaded (every command). Not firstresult: every
    plugin registers. Call ``register(family=..., builder="module:callable",
    hf_architectures=[...], model_types=[...], gguf_architectures=[...])`` once per family; it
    returns the ``ArchitectureSpec`` it recorded. Must be cheap: no heavy imports here; the
    builder is imported only when a checkpoint of the family is opened. Returns nothing.
    """


@hookspec
def imp_register_attention_backends(register: Callable[..., "AttentionBackend"]) -> None:
    """Add attention backends to the one registry the policy chooses from and the layers run.

    Called once, right after the plugins are loaded. Not firstresult: every plugin registers.
    Call ``register(backend, first=True)`` with an ``AttentionBackend`` (its capabilities and its
    ``run`` function); ``first=True`` puts it at the head of the chain (tried before the core's
    ``sdpa`` and ``eager``, which the core appends last). A name registered twice is an error.
    Returns nothing.
    """


@hookspec(firstresult=True)
def imp_detect_quant(checkpoint: "Checkpoint", family: str) -> "QuantPlan | None":
    """Say how the checkpoint's weights are stored (a ``QuantPlan``), or None to pass.

    ``family`` is the name of the family that claimed the checkpoint. Called once per run after
    the architecture is resolved, before any tensor bytes are read. firstresult: a family plugin
    may claim a layout first (e.g. a family-specific expert packing); the core's detectors are
    the ``imp-core`` plugin and answer last. Must be a pure function of the checkpoint's
    metadata. Raise ``QuantError`` for a layout that is recognised but incomplete or unsupported.
    """


@hookspec(firstresult=True)
def imp_phase_policy(phase: str, model: "ModelInfo", default: "PhaseDecision", settings: "Settings",
                     device: "torch.device") -> "PhaseDecision | None":
    """Enable, skip or restrict one pre-dequant phase (``"0"``, ``"3a"``, ``"3b"``, ``"3-MoE"``).

    Called once per phase per run, after quant detection and before any weight is processed.
    ``default`` is the core's own decision for this phase; ``device`` is the resolved run device
    (a family may decide "on CUDA only"). firstresult: return a ``PhaseDecision`` for the same
    phase (with a one-line reason) to override the default, or None to accept it.
    """


@hookspec
def imp_decode_fast_path(model: "ModelInfo", settings: "Settings", device: "torch.device"
                         ) -> "list[str] | None":
    """Reasons the decode fast path cannot run for this model on ``device``, or [] / None.

    Called once per run when the runtime is planned. Not firstresult: every plugin and the
    core contribute; the fast path runs only if nobody gives a reason. This is the ONE
    eligibility predicate; the phases and the generator both read its answer.
    """


@hookspec(firstresult=True)
def imp_attention_backend(layer: "AttentionLayerSpec", candidates: "list[str]", registry: "AttentionRegistry",
                          settings: "Settings", device: "torch.device") -> "AttentionChoice | None":
    """Choose the attention backend for one layer, or decline some candidates.

    Called once per attention layer per run. ``candidates`` are the names of the backends the
    core would try, best first, already filtered by what each backend says it supports on
    ``device``; ``registry`` holds every registered ``AttentionBackend`` (to read capabilities,
    e.g. to say which backend was declined and why). firstresult: return an ``AttentionChoice``
    naming one of ``candidates`` with the reason, or None to let the core take the first
    candidate. Choosing a name outside ``candidates`` is a contract error.
    """


@hookspec
def imp_adjust_settings(model: "ModelInfo", settings: "Settings") -> "list[SettingOverride] | None":
    """Per-family defaults for settings keys.

    Called once per run after the model config is parsed. Not firstresult: all overrides are
    collected; each applies only if the user left that key at its default (so config files,
    environment and flags always win), and each is logged with its reason.
    """


@hookspec(firstresult=True)
def imp_output_parser(family: str, prompt: str, tools: "list[dict] | None") -> "OutputParser | None":
    """A fresh incremental parser of the family's output syntax, or None to pass.

    Called once per generation (each request of ``imp serve``, each turn of ``imp chat``),
    before the first token. ``prompt`` is the rendered prompt text (so the parser knows when the
    template already opened a reasoning block); ``tools`` is the request's tool list or None.
    firstresult: a family plugin answers for its own ``family`` name; the core answers last with
    a parser that treats everything as answer text. The parser follows
    ``imp_core.text.output_parser.OutputParser``: ``feed(text)`` and ``finish()`` return
    ``OutputEvent``s (answer text, reasoning text, complete tool calls), and ``markers`` names
    the strings it must see even where the tokenizer marks them special.
    """
