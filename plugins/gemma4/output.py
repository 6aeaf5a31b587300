"""Gemma-4 output syntax: the thought channel and ``<|tool_call>call:NAME{...}<tool_call|>``.

Reasoning is written as ``<|channel>thought\\n...<channel|>``. A call's arguments are an
object with bare keys whose strings are delimited by the ``<|"|>`` token instead of quotes
(``call:get_weather{city:<|"|>Paris<|"|>,days:3}``); numbers, booleans, arrays and nested
objects are otherwise JSON.
"""

from __future__ import annotations

import json
import re

from imp_core.text.output_parser import TaggedOutputParser, ToolCall, starts_in_block

THOUGHT = ("<|channel>thought\n", "<channel|>")
TOOL_OPEN, TOOL_CLOSE = "<|tool_call>", "<tool_call|>"
STRING_DELIMITER = '<|"|>'
_CALL = re.compile(r"\s*call:([A-Za-z_][\w.\-]*)\s*(\{.*\})\s*\Z", re.DOTALL)
_STRING = re.compile(re.escape(STRING_DELIMITER) + r"(.*?)" + re.escape(STRING_DELIMITER), re.DOTALL)
# a quoted JSON string is matched first and kept, so key-like text inside it is never touched
_BARE_KEY = re.compile(r'"(?:\\.|[^"\\])*"|(?<=[{,])(\s*)([A-Za-z_]\w*)(\s*):')


def output_parser(prompt: str) -> TaggedOutputParser:
    return TaggedOutputParser(reasoning=THOUGHT, tool_open=TOOL_OPEN, tool_close=TOOL_CLOSE,
                              decode_tool=decode_tool_call, extra_markers=(STRING_DELIMITER,),
                              start_in_reasoning=starts_in_block(prompt, *THOUGHT))


def decode_tool_call(body: str) -> list[ToolCall] | None:
    match = _CALL.match(body)
    if match is None:
        return None
    try:
        args = json.loads(_to_json(match.group(2)))
    except json.JSONDecodeError:
        return None
    if not isinstance(args, dict):
        return None
    return [ToolCall(match.group(1), json.dumps(args, ensure_ascii=False))]


def _to_json(text: str) -> str:
    strings: list[str] = []

    def stash(m: re.Match) -> str:
        strings.append(m.group(1))
        return f'"\x00{len(strings) - 1}\x00"'

    text = _STRING.sub(stash, text)
    text = _BARE_KEY.sub(lambda m: m.group(0) if m.group(2) is None else f'{m.group(1)}"{m.group(2)}"{m.group(3)}:',
                         text)
    return re.sub(r'"\x00(\d+)\x00"', lambda m: json.dumps(strings[int(m.group(1))], ensure_ascii=False), text)
