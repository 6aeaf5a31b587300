"""Qwen3.5/3.6 output syntax: ``<think>...</think>`` reasoning and ``<tool_call>`` blocks.

The chat template prefills ``<think>\\n`` when thinking is on, so a generation may start inside
the reasoning block. A tool-call body is the XML-like form the Qwen3.5 template writes
(``<function=NAME>`` with ``<parameter=KEY>VALUE</parameter>`` children; a value is plain text
for string parameters and JSON otherwise) or, as older Qwen templates write it, a JSON object
``{"name": ..., "arguments": {...}}``; both are read.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, Sequence

from imp_core.text.output_parser import TaggedOutputParser, ToolCall, arguments_json, starts_in_block

THINK = ("<think>", "</think>")
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
_FUNCTION = re.compile(r"\s*<function=([^>\n]+)>(.*?)</function>\s*\Z", re.DOTALL)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.DOTALL)
_PYTHON_LITERALS = {"True": True, "False": False, "None": None}


def output_parser(prompt: str, tools: Sequence[Mapping[str, Any]] | None) -> TaggedOutputParser:
    schemas = _parameter_types(tools)
    return TaggedOutputParser(reasoning=THINK, tool_open=TOOL_OPEN, tool_close=TOOL_CLOSE,
                              decode_tool=lambda body: decode_tool_call(body, schemas),
                              start_in_reasoning=starts_in_block(prompt, *THINK))


def decode_tool_call(body: str, schemas: Mapping[str, Mapping[str, str]] | None = None) -> list[ToolCall] | None:
    text = body.strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return None
        args = arguments_json(obj.get("arguments", {}))
        return None if args is None else [ToolCall(obj["name"], args)]
    match = _FUNCTION.match(body)
    if match is None:
        return None
    name = match.group(1).strip()
    types = (schemas or {}).get(name, {})
    args = {key.strip(): _parameter_value(value, types.get(key.strip()))
            for key, value in _PARAMETER.findall(match.group(2))}
    return [ToolCall(name, json.dumps(args, ensure_ascii=False))]


def _parameter_value(text: str, declared: str | None) -> Any:
    if declared == "string":
        return text
    if text in _PYTHON_LITERALS:  # the template writes non-string scalars with Jinja's |string
        return _PYTHON_LITERALS[text]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parameter_types(tools: Sequence[Mapping[str, Any]] | None) -> dict[str, dict[str, str]]:
    """{function name: {parameter: JSON-schema type}} from the request's ``tools``."""
    out: dict[str, dict[str, str]] = {}
    for tool in tools or ():
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            continue
        props = (fn.get("parameters") or {}).get("properties") or {}
        out[fn["name"]] = {k: v.get("type") for k, v in props.items()
                           if isinstance(v, Mapping) and isinstance(v.get("type"), str)}
    return out
