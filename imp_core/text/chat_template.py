"""Hugging Face chat templates, rendered the way transformers 5 renders them.

The template is untrusted Jinja code from the checkpoint, so it runs in jinja2's immutable
sandbox with the same environment, filters and globals transformers gives it
(``transformers.utils.chat_template_utils``): ``trim_blocks``, ``lstrip_blocks``, loop
controls, a no-op ``{% generation %}`` block, ``tojson`` without HTML escaping,
``raise_exception``, ``strftime_now`` and the restricted ``dict``/``namespace`` globals. The
inputs are converted to plain JSON data first, as transformers does, so the rendered string
is identical to ``tokenizer.apply_chat_template(..., tokenize=False)``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment

from imp_core.errors import ConfigError

# Names a message's reasoning is passed under; the first is the one templates read.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(ConfigError):
    """A chat template that does not compile, or that refused (or failed on) the given messages."""


class _TemplateRaised(jinja2.TemplateError):
    """What ``raise_exception(msg)`` throws inside the template; turned into ChatTemplateError."""


class _GenerationBlock(jinja2.ext.Extension):
    """Accept ``{% generation %}...{% endgeneration %}`` (used for assistant masks) as a plain block."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Any) -> str:
        return caller()


def _raise_exception(message: Any) -> None:
    raise _TemplateRaised(str(message))


def _tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes HTML characters; templates expect plain json.dumps output.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """``dict(...)`` inside templates, without exposing the dict type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """``namespace(...)`` that refuses underscore attributes (no path to CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - same trick as jinja's Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} starts with an underscore")


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


@lru_cache(maxsize=16)
def _compile(text: str) -> jinja2.Template:
    return _environment().from_string(text)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _plain(value: Any) -> Any:
    """A copy of ``value`` made only of JSON types (what the sandbox may see), as transformers does."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):  # pydantic models
        return _plain(value.model_dump())
    if isinstance(value, np.generic):  # np.bool_(False) must not become a truthy placeholder
        return _plain(value.item())
    return f"<{type(value).__name__}>"


def _prepare_messages(messages: Any, source: str) -> list[dict]:
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise ChatTemplateError(f"chat messages for {source} must be a list of dicts, got {type(messages).__name__}")
    if len(messages) == 0:
        raise ChatTemplateError(f"cannot apply chat template {source} to an empty conversation")
    prepared = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise ChatTemplateError(f"chat messages must be dicts with 'role' and 'content', got {message!r}")
        # Keys whose value is None are dropped: templates handle a missing key, not a literal None.
        message = _plain({k: v for k, v in message.items() if v is not None})
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        prepared.append(message)
    return prepared


class ChatTemplate:
    """A compiled chat template; ``source`` (a file, or file:key) is named in every error."""

    def __init__(self, text: str, source: str) -> None:
        if not isinstance(text, str):
            raise ChatTemplateError(f"{source}: chat template must be a string, got {type(text).__name__}")
        self.text = text
        self.source = source
        try:
            self._template = _compile(text)
        except jinja2.TemplateSyntaxError as err:
            raise ChatTemplateError(
                f"{source}: chat template syntax error at line {err.lineno}: {_one_line(err.message or err)}"
            ) from None

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = False,
        special_tokens: Mapping[str, str] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        **template_kwargs: Any,
    ) -> str:
        """Render ``messages``; ``special_tokens`` (bos_token, eos_token, ...) are overridden by kwargs."""
        chat = _prepare_messages(messages, self.source)
        for name, items in (("tools", tools), ("documents", documents)):
            if items is not None and not all(isinstance(item, Mapping) for item in items):
                raise ChatTemplateError(f"chat template {name} must be a list of JSON-schema dicts")
        variables = _plain({**(special_tokens or {}), **template_kwargs})
        try:
            return self._template.render(
                messages=chat,
                tools=_plain(list(tools)) if tools is not None else None,
                documents=_plain(list(documents)) if documents is not None else None,
                add_generation_prompt=bool(add_generation_prompt),
                **variables,
            )
        except _TemplateRaised as err:
            raise ChatTemplateError(f"chat template raised: {_one_line(err.message or '')}") from None
        except jinja2.TemplateError as err:
            raise ChatTemplateError(
                f"chat template {self.source} failed: {type(err).__name__}: {_one_line(err.message or err)}"
            ) from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as err:
            raise ChatTemplateError(
                f"chat template {self.source} failed: {type(err).__name__}: {_one_line(err)}"
            ) from None


def render_chat_template(text: str, messages: Sequence[Mapping[str, Any]], *, source: str = "<chat template>",
                         add_generation_prompt: bool = False, **template_kwargs: Any) -> str:
    """Compile (cached) and render one template; see ``ChatTemplate.render``."""
    return ChatTemplate(text, source).render(messages, add_generation_prompt=add_generation_prompt,
                                             **template_kwargs)
