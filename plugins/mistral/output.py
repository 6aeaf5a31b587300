"""Mistral output syntax: ``[TOOL_CALLS]`` calls and (Magistral) ``[THINK]...[/THINK]`` reasoning.

Mistral-Small-3.2's template writes each call as ``[TOOL_CALLS]NAME[ARGS]{json}`` (some
templates put ``[CALL_ID]ID`` before ``[ARGS]``); older ones write one ``[TOOL_CALLS]`` followed
by a JSON list of ``{"name", "arguments"}``. A call has no closing marker: it runs to the next
``[TOOL_CALLS]`` or to the end of the generation.
"""

from __future__ import annotations

import json
import re

from imp_core.text.output_parser import TaggedOutputParser, ToolCall, arguments_json, starts_in_block

THINK = ("[THINK]", "[/THINK]")
TOOL_CALLS, ARGS, CALL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"
_NAMED = re.compile(r"\s*([A-Za-z0-9_.\-]+)\s*(?:\[CALL_ID\]\s*([A-Za-z0-9]+)\s*)?\[ARGS\](.*)\Z", re.DOTALL)


def output_parser(prompt: str) -> TaggedOutputParser:
    return TaggedOutputParser(reasoning=THINK, tool_open=TOOL_CALLS, tool_close=None,
                              decode_tool=decode_tool_calls, extra_markers=(ARGS, CALL_ID),
                              start_in_reasoning=starts_in_block(prompt, *THINK))


def decode_tool_calls(body: str) -> list[ToolCall] | None:
    named = _NAMED.match(body)
    if named is not None:
        args = arguments_json(named.group(3).strip())
        return None if args is None else [ToolCall(named.group(1), args, named.group(2))]
    try:
        items = json.loads(body)
    except json.JSONDecodeError:
        return None
    if isinstance(items, dict):
        items = [items]
    calls = []
    for item in items if isinstance(items, list) else ():
        args = arguments_json(item.get("arguments", {})) if isinstance(item, dict) else None
        if args is None or not isinstance(item.get("name"), str):
            return None
        calls.append(ToolCall(item["name"], args, item.get("id") if isinstance(item.get("id"), str) else None))
    return calls or None
