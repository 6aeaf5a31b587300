"""Reasoning and tool calls through the HTTP layer: a scripted engine writes Qwen3.6 syntax in
small pieces, the family's parser (through the hook) splits it, and the openai client sees
``reasoning_content`` apart from ``content`` and tool calls as ``tool_calls``, whole and streamed.
The tools of a request reach the chat template."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from imp_core.plugin.manager import load_plugins
from imp_core.run.sampling import SamplingParams
from imp_core.serve.app import ServerState, create_app
from imp_core.serve.jobs import Delta, Finished, GenerationJob
from imp_core.serve.scheduler import FifoScheduler
from imp_core.text.tokenizer import Tokenizer
from imp_core.testing.tiny_tokenizer import write_tiny_tokenizer

openai = pytest.importorskip("openai")
testclient = pytest.importorskip("starlette.testclient")

SCRIPT = ("<think>\nThe user asks for the weather.\n</think>\n\nLet me look.\n<tool_call>\n<function=get_weather>\n"
          "<parameter=city>\nParis\n</parameter>\n<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>")
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "the weather of a city",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string"}, "days": {"type": "integer"}}}}}]
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = tmp_path_factory.mktemp("chatml")
    write_tiny_tokenizer(path, style="chatml")
    tok = Tokenizer.from_dir(path)
    prompts: list[str] = []

    def scripted(job: GenerationJob, emit) -> None:
        prompts.append(tok.decode(job.prompt_ids, skip_special_tokens=False))
        if "explode" in prompts[-1]:
            raise RuntimeError("the engine broke")
        for i in range(0, len(SCRIPT), 3):  # pieces that cut markers apart
            events = job.parser.feed(SCRIPT[i:i + 3])
            if events:
                emit(Delta(events))
        emit(Delta(job.parser.finish()))
        emit(Finished("stop", len(job.prompt_ids), 40))

    inspection = SimpleNamespace(context=4096, spec=SimpleNamespace(family="qwen36"),
                                 info=SimpleNamespace(vocab_size=tok.vocab_size))
    state = ServerState(session=SimpleNamespace(tokenizer=tok, inspection=inspection), model_name="qwen",
                        hook=load_plugins(env={}).hook, scheduler=FifoScheduler(scripted, 4),
                        defaults=SamplingParams(), default_max_tokens=64)
    with testclient.TestClient(create_app(state)) as http:
        yield openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0), prompts, http


def test_whole_answer_separates_reasoning_content_and_tool_calls(served):
    client, prompts, _ = served
    msg = client.chat.completions.create(model="qwen", messages=ASK, tools=TOOLS)
    choice = msg.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me look.\n"
    assert choice.message.model_extra["reasoning_content"] == "The user asks for the weather.\n"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.type == "function" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 2}
    assert '"name": "get_weather"' in prompts[-1] and "<tools>" in prompts[-1]


def test_streamed_deltas_carry_reasoning_apart_and_the_call_whole(served):
    client, prompts, _ = served
    chunks = list(client.chat.completions.create(model="qwen", messages=ASK, tools=TOOLS, stream=True))
    deltas = [c.choices[0].delta for c in chunks]
    reasoning = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    assert reasoning == "The user asks for the weather.\n"
    assert "".join(d.content or "" for d in deltas) == "Let me look.\n"
    calls = [tc for d in deltas for tc in d.tool_calls or []]
    assert [(tc.index, tc.function.name, json.loads(tc.function.arguments)) for tc in calls] == \
        [(0, "get_weather", {"city": "Paris", "days": 2})]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not any(d.content and "<" in d.content for d in deltas)


def test_tool_choice_none_keeps_tools_out_of_the_template(served):
    client, prompts, _ = served
    client.chat.completions.create(model="qwen", messages=ASK, tools=TOOLS, tool_choice="none")
    assert "<tools>" not in prompts[-1]
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    client.chat.completions.create(model="qwen", messages=history, tools=TOOLS)
    assert "<|im_start|>tool\nsunny" in prompts[-1]


def test_an_engine_failure_is_a_500_in_openai_shape_and_the_next_request_is_served(served):
    client, _, http = served
    boom = [{"role": "user", "content": "explode"}]
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="qwen", messages=boom)
    assert err.value.body["type"] == "server_error" and "the engine broke" in err.value.body["message"]
    with http.stream("POST", "/v1/chat/completions", json={"model": "qwen", "messages": boom, "stream": True}) as resp:
        lines = [line for line in resp.iter_lines() if line]
    assert json.loads(lines[-2][6:])["error"]["type"] == "server_error" and lines[-1] == "data: [DONE]"
    assert client.chat.completions.create(model="qwen", messages=ASK).choices[0].message.content == "Let me look.\n"
