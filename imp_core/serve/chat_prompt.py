"""OpenAI chat messages and tools -> the prompt text of the checkpoint's chat template.

HF templates read ``messages`` with plain-text ``content``, assistant ``tool_calls`` whose
``function.arguments`` is a mapping (the Qwen and Gemma templates iterate over it), and the
tool list as the ``tools`` variable.
"""

from __future__ import annotations

import json
from typing import Any

from imp_core.serve.errors import invalid
from imp_core.serve.protocol import ChatCompletionRequest, Message


def template_messages(messages: list[Message]) -> list[dict[str, Any]]:
    out = []
    for i, msg in enumerate(messages):
        item: dict[str, Any] = {"role": msg.role, "content": _text(msg.content)}
        if msg.name is not None:
            item["name"] = msg.name
        if msg.tool_call_id is not None:
            item["tool_call_id"] = msg.tool_call_id
        if msg.reasoning_content is not None:
            item["reasoning_content"] = msg.reasoning_content
        if msg.tool_calls:
            item["tool_calls"] = [{"id": call.id, "type": "function",
                                   "function": {"name": call.function.name,
                                                "arguments": _arguments(call.function.arguments, i)}}
                                  for call in msg.tool_calls]
        out.append(item)
    return out


def template_tools(req: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    """The tools the template is shown: none when ``tool_choice`` is "none"."""
    if not req.tools or req.tool_choice == "none":
        return None
    return [tool.model_dump(exclude_none=True) for tool in req.tools]


def render_prompt(tokenizer: Any, req: ChatCompletionRequest) -> str:
    kwargs = dict(req.chat_template_kwargs or {})
    tools = template_tools(req)
    if tools is not None:
        kwargs["tools"] = tools
    return tokenizer.apply_chat_template(template_messages(req.messages), add_generation_prompt=True, **kwargs)


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)


def _arguments(text: str, index: int) -> Any:
    try:
        return json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        raise invalid(f"messages.{index}.tool_calls: function.arguments is not valid JSON",
                      f"messages.{index}.tool_calls") from None
