"""Request bodies of the OpenAI API that imp serves, validated with pydantic.

Unknown fields are refused, as OpenAI refuses them; fields that imp accepts but cannot honour
with another value (``n`` > 1, ``logprobs``, a ``logit_bias``, ...) are checked in
:func:`unsupported_values`, so every refusal names its parameter.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCallIn(_Strict):
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCallIn]] = None
    tool_call_id: Optional[str] = None
    reasoning_content: Optional[str] = None


class FunctionDef(_Strict):
    name: str
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: dict[str, str]


class StreamOptions(_Strict):
    include_usage: bool = False


class ResponseFormat(_Strict):
    type: str


class SamplingFields(_Strict):
    """Fields both endpoints share. None means the server's setting (which includes the
    checkpoint's generation_config.json defaults)."""

    model: str
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(None, ge=0)
    min_p: Optional[float] = Field(None, ge=0.0, le=1.0)
    repetition_penalty: Optional[float] = Field(None, gt=0.0)
    presence_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    seed: Optional[int] = Field(None, ge=0, le=2**64 - 1)
    max_tokens: Optional[int] = None
    stop: Union[str, list[str], None] = None
    n: int = 1
    logprobs: Optional[Any] = None
    logit_bias: Optional[dict[str, float]] = None
    user: Optional[str] = None
    ignore_eos: bool = False  # vLLM's extension: generate exactly max_tokens tokens

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = None
    tools: Optional[list[Tool]] = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: Optional[bool] = None
    top_logprobs: Optional[int] = None
    response_format: Optional[ResponseFormat] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None
    metadata: Optional[dict[str, str]] = None
    store: Optional[bool] = None


class CompletionRequest(SamplingFields):
    prompt: Union[str, list[str], list[int]]
    max_tokens: Optional[int] = 16  # OpenAI's default for this endpoint
    echo: bool = False
    suffix: Optional[str] = None
    best_of: Optional[int] = None


def unsupported_values(req: SamplingFields) -> tuple[str, str] | None:
    """(param, message) for the first value imp cannot honour, or None."""
    checks: list[tuple[bool, str, str]] = [
        (req.n != 1, "n", "only n=1 is supported"),
        (req.logprobs not in (None, False), "logprobs", "logprobs are not supported"),
        (bool(req.logit_bias), "logit_bias", "logit_bias is not supported"),
        (bool(req.presence_penalty), "presence_penalty",
         "presence_penalty is not supported (use repetition_penalty)"),
        (bool(req.frequency_penalty), "frequency_penalty",
         "frequency_penalty is not supported (use repetition_penalty)"),
        (any(s == "" for s in req.stop_list()), "stop", "stop strings must not be empty"),
        (len(req.stop_list()) > 4, "stop", "at most 4 stop strings"),
    ]
    if isinstance(req, ChatCompletionRequest):
        checks += [
            (req.top_logprobs is not None, "top_logprobs", "logprobs are not supported"),
            (req.response_format is not None and req.response_format.type != "text", "response_format",
             "only response_format type 'text' is supported"),
            (req.tool_choice == "required" or isinstance(req.tool_choice, NamedToolChoice), "tool_choice",
             "tool_choice 'required' and named functions are not supported (constrained decoding is not "
             "implemented); use 'auto' or 'none'"),
        ]
    if isinstance(req, CompletionRequest):
        checks += [
            (req.echo, "echo", "echo is not supported"),
            (req.suffix is not None, "suffix", "suffix is not supported"),
            (req.best_of not in (None, 1), "best_of", "only best_of=1 is supported"),
            (isinstance(req.prompt, list) and len(req.prompt) > 0 and isinstance(req.prompt[0], str)
             and len(req.prompt) != 1, "prompt", "only one prompt per request is supported"),
        ]
    for failed, param, message in checks:
        if failed:
            return param, message
    return None
