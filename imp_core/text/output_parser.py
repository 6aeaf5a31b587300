"""Split generated text into answer, reasoning and tool calls while it streams.

Each family writes its thinking and its tool calls in its own syntax; a family plugin answers
the ``imp_output_parser`` hook with a parser for it, usually a :class:`TaggedOutputParser`
configured with the family's markers and a function that decodes one tool-call body. Text
arrives in arbitrary pieces (a marker may straddle two tokens), so the parser holds back the
longest tail that could still grow into a marker and emits the rest: the events of a stream
depend only on the concatenated text, never on where it was split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Literal, Protocol, Sequence


@dataclass(frozen=True)
class ToolCall:
    """One call the model asked for; ``arguments`` is a JSON object in text, as OpenAI sends it."""

    name: str
    arguments: str
    id: str | None = None


@dataclass(frozen=True)
class OutputEvent:
    kind: Literal["content", "reasoning", "tool_call"]
    text: str = ""
    tool_call: ToolCall | None = None


class OutputParser(Protocol):
    """Incremental parser of one generation. ``markers`` are the strings it must see in the text
    even where the tokenizer marks them special (the detokenizer keeps those tokens)."""

    markers: tuple[str, ...]

    def feed(self, text: str) -> list[OutputEvent]: ...

    def finish(self) -> list[OutputEvent]: ...


class PlainOutputParser:
    """Everything is answer text: the parser of a family that declares no syntax."""

    markers: tuple[str, ...] = ()

    def feed(self, text: str) -> list[OutputEvent]:
        return [OutputEvent("content", text)] if text else []

    def finish(self) -> list[OutputEvent]:
        return []


ToolBodyDecoder = Callable[[str], "list[ToolCall] | None"]


class TaggedOutputParser:
    """Reasoning between ``reasoning`` = (open, close) markers, tool calls from ``tool_open`` to
    ``tool_close`` (or, with ``tool_close`` None, to the next ``tool_open`` or the end of the
    text), everything else answer text.

    ``decode_tool`` turns one tool-call body into calls, or None when it cannot (the raw text is
    then kept as answer text, so nothing the model wrote is lost). ``start_in_reasoning``: the
    prompt already opened the reasoning block. Whitespace right after a block is dropped.
    """

    def __init__(self, *, reasoning: tuple[str, str] | None, tool_open: str | None,
                 tool_close: str | None, decode_tool: ToolBodyDecoder | None,
                 start_in_reasoning: bool = False, extra_markers: Sequence[str] = ()) -> None:
        self._reasoning = reasoning
        self._tool_open, self._tool_close, self._decode_tool = tool_open, tool_close, decode_tool
        self.markers = tuple(m for m in (*(reasoning or ()), tool_open, tool_close, *extra_markers) if m)
        self._mode: Literal["content", "reasoning", "tool"] = \
            "reasoning" if start_in_reasoning and reasoning else "content"
        self._held = ""
        self._body = ""
        self._strip_leading = self._mode == "reasoning"

    def _active_markers(self) -> list[str]:
        if self._mode == "reasoning":
            return [self._reasoning[1]]
        if self._mode == "tool":
            return [self._tool_close or self._tool_open]
        return [m for m in ((self._reasoning or (None,))[0], self._tool_open) if m]

    def feed(self, text: str) -> list[OutputEvent]:
        events: list[OutputEvent] = []
        buf = self._held + text
        while True:
            markers = self._active_markers()
            found = [(i, m) for m in markers if (i := buf.find(m)) >= 0]
            if not found:
                keep = _longest_partial_marker(buf, markers)
                self._emit(buf[:len(buf) - keep], events)
                self._held = buf[len(buf) - keep:]
                return events
            i, marker = min(found)
            self._emit(buf[:i], events)
            buf = buf[i + len(marker):]
            self._switch(marker, events)

    def finish(self) -> list[OutputEvent]:
        events: list[OutputEvent] = []
        self._emit(self._held, events)
        self._held = ""
        if self._mode == "tool":
            if self._tool_close is None:
                self._close_tool(events)
            else:  # an unclosed call is not a call: keep what the model wrote
                self._emit_text("content", self._tool_open + self._body, events)
                self._body = ""
        self._mode = "content"
        return events

    def _emit(self, text: str, events: list[OutputEvent]) -> None:
        if self._mode == "tool":
            self._body += text
        else:
            self._emit_text(self._mode, text, events)

    def _emit_text(self, kind: Literal["content", "reasoning"], text: str, events: list[OutputEvent]) -> None:
        if self._strip_leading:
            text = text.lstrip()
            self._strip_leading = not text
        if not text:
            return
        if events and events[-1].kind == kind:
            events[-1] = OutputEvent(kind, events[-1].text + text)
        else:
            events.append(OutputEvent(kind, text))

    def _switch(self, marker: str, events: list[OutputEvent]) -> None:
        if self._mode == "content":
            self._mode = "reasoning" if self._reasoning and marker == self._reasoning[0] else "tool"
            self._body = ""
        elif self._mode == "reasoning":
            self._mode = "content"
        else:
            decoded = self._close_tool(events)
            if self._tool_close is None:  # the next call's marker: stay in a tool body
                self._mode = "tool"
                return
            self._mode = "content"
            if not decoded:
                return
        self._strip_leading = True

    def _close_tool(self, events: list[OutputEvent]) -> bool:
        """Emit the calls of the finished body (True), or its raw text when it is none (False)."""
        body, self._body = self._body, ""
        calls = self._decode_tool(body) if self._decode_tool is not None else None
        if calls is None:
            self._emit_text("content", self._tool_open + body + (self._tool_close or ""), events)
            return False
        events.extend(OutputEvent("tool_call", tool_call=call) for call in calls)
        return True


def _longest_partial_marker(text: str, markers: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a marker."""
    best = 0
    for marker in markers:
        for length in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:length]):
                best = length
                break
    return best


def starts_in_block(prompt: str, open_marker: str, close_marker: str) -> bool:
    """True when ``prompt`` ends inside an open block (the template prefilled the opener)."""
    opened = prompt.rfind(open_marker)
    return opened >= 0 and opened > prompt.rfind(close_marker)


def arguments_json(value: object) -> str | None:
    """OpenAI sends arguments as JSON text of an object; None for anything else."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else None


def merge_events(events: Sequence[OutputEvent]) -> list[OutputEvent]:
    """Adjacent text events of one kind joined: the same text however the stream was split."""
    merged: list[OutputEvent] = []
    for ev in events:
        if ev.kind != "tool_call" and merged and merged[-1].kind == ev.kind:
            merged[-1] = OutputEvent(ev.kind, merged[-1].text + ev.text)
        elif ev.kind == "tool_call" or ev.text:
            merged.append(ev)
    return merged
