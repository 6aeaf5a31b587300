"""The HTTP layer: OpenAI-compatible routes over a scheduler, with FastAPI.

Every request is checked completely (body, model name, parameters, prompt length) before it is
queued, so a bad request costs no engine time. Generation itself happens behind the
scheduler; ``streams`` turns its events into JSON or server-sent events.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, TypeVar

from fastapi import FastAPI, Request
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from imp_core.errors import ImpError
from imp_core.run.sampling import SamplingParams
from imp_core.run.session import Session
from imp_core.serve.chat_prompt import render_prompt, template_tools
from imp_core.serve.errors import APIError, invalid, validation_error
from imp_core.serve.jobs import GenerationJob
from imp_core.serve.metrics import ServerMetrics
from imp_core.serve.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields, unsupported_values
from imp_core.serve.responses import Header, new_id
from imp_core.serve.streams import chat_stream, chat_whole, sse_response, text_stream, text_whole
from imp_core.serve.scheduler import JobHandle, NotAccepting, QueueFull, Scheduler
from imp_core.text.output_parser import PlainOutputParser

RequestT = TypeVar("RequestT", bound=SamplingFields)
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models")


@dataclass
class ServerState:
    session: Session
    model_name: str
    hook: Any
    scheduler: Scheduler
    defaults: SamplingParams
    default_max_tokens: int
    api_key: str | None = None
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def context(self) -> int:
        return self.session.inspection.context

    @property
    def family(self) -> str:
        return self.session.inspection.spec.family


def create_app(state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(state.scheduler.close)

    app = FastAPI(title="imp", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.imp = state

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        state.metrics.requests.labels(_endpoint(request), "error").inc()
        return exc.response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return APIError(exc.status_code, str(exc.detail), code=code).response()

    @app.middleware("http")
    async def check_api_key(request: Request, call_next: Any) -> Response:
        if state.api_key and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, f"Bearer {state.api_key}".encode()):
                state.metrics.requests.labels(_endpoint(request), "error").inc()
                return APIError(401, "Incorrect API key provided.", code="invalid_api_key").response()
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        state.metrics.queue_length.set(state.scheduler.queue_length)
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(state)]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict[str, Any]:
        _check_model(state, name)
        return _model_card(state)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req = await _parse(request, ChatCompletionRequest)
        max_tokens = _max_tokens(state, req, req.max_completion_tokens, "max_completion_tokens")
        tok = state.session.tokenizer
        if not tok.has_chat_template:
            raise invalid("this model has no chat template; use /v1/completions", "messages")
        try:
            prompt = render_prompt(tok, req)
        except ImpError as exc:  # the template refused the conversation (roles, tools, ...)
            raise invalid(str(exc), "messages") from None
        ids = tok.encode(prompt, add_special_tokens=False)
        tools = template_tools(req)
        parser = state.hook.imp_output_parser(family=state.family, prompt=prompt, tools=tools)
        handle = _submit(state, req, ids, max_tokens, parser)
        header = Header(new_id("chatcmpl"), state.model_name, "chat.completion.chunk")
        if req.stream:
            return sse_response(chat_stream(state.metrics, handle, header, _include_usage(req)), handle)
        return JSONResponse(await chat_whole(state.metrics, request, handle, header))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req = await _parse(request, CompletionRequest)
        max_tokens = _max_tokens(state, req, None, "max_tokens")
        tok = state.session.tokenizer
        if isinstance(req.prompt, str) or (req.prompt and isinstance(req.prompt[0], str)):
            text = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
            ids = tok.encode(text, add_special_tokens=True)
        else:
            ids = list(req.prompt)
            if any(i < 0 or i >= state.session.inspection.info.vocab_size for i in ids):
                raise invalid("prompt: token ids must be in [0, vocab size)", "prompt")
        handle = _submit(state, req, ids, max_tokens, PlainOutputParser())
        header = Header(new_id("cmpl"), state.model_name, "text_completion")
        if req.stream:
            return sse_response(text_stream(state.metrics, handle, header, _include_usage(req)), handle)
        return JSONResponse(await text_whole(state.metrics, request, handle, header))

    return app


def _endpoint(request: Request) -> str:
    """The metrics label of a request: its endpoint, never a client-chosen path."""
    path = request.url.path
    return path if path in ENDPOINTS else "/v1/models" if path.startswith("/v1/models") else "other"


def _model_card(state: ServerState) -> dict[str, Any]:
    return {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "imp",
            "max_model_len": state.context}


def _check_model(state: ServerState, name: str) -> None:
    if name != state.model_name:
        raise APIError(404, f"The model `{name}` does not exist; this server serves `{state.model_name}`.",
                       param="model", code="model_not_found")


async def _parse(request: Request, model: type[RequestT]) -> RequestT:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", code="invalid_json")
    try:
        req = model.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None
    state: ServerState = request.app.state.imp
    _check_model(state, req.model)
    refused = unsupported_values(req)
    if refused is not None:
        raise invalid(refused[1], refused[0], "unsupported_value")
    return req


def _max_tokens(state: ServerState, req: SamplingFields, preferred: int | None, preferred_name: str) -> int:
    value, name = (preferred, preferred_name) if preferred is not None else (req.max_tokens, "max_tokens")
    if value is None:
        return state.default_max_tokens
    if value < 1:
        raise invalid(f"{name} must be at least 1, got {value}", name, "invalid_value")
    return value


def _sampling(state: ServerState, req: SamplingFields) -> SamplingParams:
    d = state.defaults
    pick = lambda value, default: default if value is None else value  # noqa: E731
    try:
        return SamplingParams(temperature=pick(req.temperature, d.temperature), top_k=pick(req.top_k, d.top_k),
                              top_p=pick(req.top_p, d.top_p), min_p=pick(req.min_p, d.min_p),
                              repeat_penalty=pick(req.repetition_penalty, d.repeat_penalty),
                              repeat_last_n=d.repeat_last_n, seed=pick(req.seed, d.seed))
    except ImpError as exc:
        raise invalid(str(exc).replace("sampling.", ""), code="invalid_value") from None


def _submit(state: ServerState, req: SamplingFields, ids: list[int], max_tokens: int, parser: Any) -> JobHandle:
    if not ids:
        raise invalid("the prompt is empty after tokenization", "prompt")
    if len(ids) > state.context:
        raise invalid(f"This model's maximum context length is {state.context} tokens, but the prompt is "
                      f"{len(ids)} tokens.", "messages" if isinstance(req, ChatCompletionRequest) else "prompt",
                      "context_length_exceeded")
    label = "/v1/chat/completions" if isinstance(req, ChatCompletionRequest) else "/v1/completions"
    job = GenerationJob(ids, _sampling(state, req), max_tokens, req.stop_list(), req.ignore_eos, parser, label)
    try:
        handle = state.scheduler.submit(job)
    except QueueFull as exc:
        raise APIError(429, f"Too many requests: {exc}; retry later.", type="rate_limit_error",
                       code="queue_full", headers={"Retry-After": "1"}) from None
    except NotAccepting as exc:
        raise APIError(503, f"Not accepting requests: {exc}.", type="server_error", code="shutting_down") from None
    state.metrics.queue_length.set(state.scheduler.queue_length)
    return handle


def _include_usage(req: SamplingFields) -> bool:
    return bool(req.stream_options and req.stream_options.include_usage)
