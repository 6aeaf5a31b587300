"""OpenAI response bodies: whole completions and streamed chunks."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from imp_core.serve.jobs import Finished
from imp_core.text.output_parser import OutputEvent, ToolCall


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def sse(data: Any) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def usage(fin: Finished) -> dict[str, int]:
    return {"prompt_tokens": fin.prompt_tokens, "completion_tokens": fin.completion_tokens,
            "total_tokens": fin.prompt_tokens + fin.completion_tokens}


def tool_call_json(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"id": call.id or f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments}}
    return {"index": index, **body} if index is not None else body


def finish_reason(fin: Finished, tool_calls: int) -> str:
    return "tool_calls" if tool_calls and fin.reason == "stop" else fin.reason


@dataclass
class Header:
    id: str
    model: str
    object: str
    created: int = field(default_factory=lambda: int(time.time()))

    def wrap(self, choices: list[dict], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                "choices": choices, **extra}


@dataclass
class ChatAccumulator:
    """Collects a chat generation's events into one assistant message."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)

    def add(self, event: OutputEvent) -> None:
        if event.kind == "content":
            self.content += event.text
        elif event.kind == "reasoning":
            self.reasoning += event.text
        elif event.tool_call is not None:
            self.tool_calls.append(event.tool_call)

    def message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant",
                               "content": self.content if self.content or not self.tool_calls else None}
        if self.reasoning:
            msg["reasoning_content"] = self.reasoning
        if self.tool_calls:
            msg["tool_calls"] = [tool_call_json(c) for c in self.tool_calls]
        return msg


def chat_delta(event: OutputEvent, tool_index: int) -> dict[str, Any]:
    if event.kind == "content":
        return {"content": event.text}
    if event.kind == "reasoning":
        return {"reasoning_content": event.text}
    return {"tool_calls": [tool_call_json(event.tool_call, tool_index)]}
