"""Each family's output syntax, parsed incrementally: the events of a recorded generation are
the same wherever the text is split (every split point, and one character at a time)."""

from __future__ import annotations

import json

import pytest

from imp_core.plugin.manager import load_plugins
from imp_core.text.output_parser import OutputEvent, PlainOutputParser, ToolCall, merge_events
from imp_gemma4.output import output_parser as gemma_parser
from imp_mistral.output import output_parser as mistral_parser
from imp_qwen36.output import output_parser as qwen_parser

WEATHER_TOOL = [{"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}, "zip": {"type": "string"}}}}}]


def content(text):
    return OutputEvent("content", text)


def reasoning(text):
    return OutputEvent("reasoning", text)


def call(name, args, call_id=None):
    return OutputEvent("tool_call", tool_call=ToolCall(name, json.dumps(args), call_id))


def _run(make, pieces):
    parser = make()
    events = []
    for piece in pieces:
        events += parser.feed(piece)
    return merge_events(events + parser.finish())


def _canonical(events):
    """Tool-call arguments compared as objects (key order and spacing are not the contract)."""
    return [(e.kind, e.text, e.tool_call and (e.tool_call.name, json.loads(e.tool_call.arguments), e.tool_call.id))
            for e in events]


def check_every_split(make, text, expected):
    want = _canonical(expected)
    assert _canonical(_run(make, [text])) == want
    assert _canonical(_run(make, list(text))) == want
    for i in range(len(text) + 1):
        assert _canonical(_run(make, [text[:i], text[i:]])) == want, i
    for i in range(0, len(text) + 1, 3):  # three pieces: a marker split twice
        j = min(len(text), i + 5)
        assert _canonical(_run(make, [text[:i], text[i:j], text[j:]])) == want, (i, j)


QWEN_CASES = [
    # thinking prefilled by the template (prompt ends in "<think>\n")
    ("<|im_start|>assistant\n<think>\n", "The user wants weather.\n</think>\n\nIt is sunny in Paris.",
     [reasoning("The user wants weather.\n"), content("It is sunny in Paris.")]),
    # thinking off: the template closed an empty block, so "<think>" in the answer would open one
    ("<|im_start|>assistant\n<think>\n\n</think>\n\n", "Plain answer with a < sign and </thin.",
     [content("Plain answer with a < sign and </thin.")]),
    ("<|im_start|>assistant\n", "<think>\nhmm</think>\n\nLet me check.\n<tool_call>\n<function=get_weather>\n"
     "<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n<parameter=zip>\n75001\n"
     "</parameter>\n</function>\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
     "{\"city\": \"Rome\"}}\n</tool_call>",
     [reasoning("hmm"), content("Let me check.\n"),
      call("get_weather", {"city": "Paris", "days": 3, "zip": "75001"}), call("get_weather", {"city": "Rome"})]),
    # a body that is not a call, and one never closed, stay answer text
    ("<|im_start|>assistant\n", "a <tool_call>not a call</tool_call> b <tool_call>{\"name\": \"x\"",
     [content("a <tool_call>not a call</tool_call> b <tool_call>{\"name\": \"x\"")]),
]


@pytest.mark.parametrize("prompt,text,expected", QWEN_CASES)
def test_qwen36_syntax(prompt, text, expected):
    check_every_split(lambda: qwen_parser(prompt, WEATHER_TOOL), text, expected)


GEMMA_CASES = [
    ("<|turn>model\n", "<|channel>thought\nNeed the weather.<channel|>Checking.<|tool_call>call:get_weather"
     "{city:<|\"|>Paris, {the} city:<|\"|>,days:3,opts:{metric:true,tags:[<|\"|>a<|\"|>,2]}}<tool_call|>",
     [reasoning("Need the weather."), content("Checking."),
      call("get_weather", {"city": "Paris, {the} city:", "days": 3, "opts": {"metric": True, "tags": ["a", 2]}})]),
    ("<|turn>model\n", "Just text, <|channel> alone is not thought.",
     [content("Just text, <|channel> alone is not thought.")]),
    ("<|turn>model\n", "<|tool_call>call:f{}<tool_call|><|tool_call>call:g{x:-1.5e3}<tool_call|>",
     [call("f", {}), call("g", {"x": -1500.0})]),
]


@pytest.mark.parametrize("prompt,text,expected", GEMMA_CASES)
def test_gemma4_syntax(prompt, text, expected):
    check_every_split(lambda: gemma_parser(prompt), text, expected)


MISTRAL_CASES = [
    ("[INST]hi[/INST]", "Sure.[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]get_time"
     "[CALL_ID]a1b2c3d4e[ARGS]{}",
     [content("Sure."), call("get_weather", {"city": "Paris"}), call("get_time", {}, "a1b2c3d4e")]),
    ("[INST]hi[/INST]", "[TOOL_CALLS] [{\"name\": \"f\", \"arguments\": {\"a\": [1, 2]}}, "
     "{\"name\": \"g\", \"arguments\": \"{\\\"b\\\": null}\"}]",
     [call("f", {"a": [1, 2]}), call("g", {"b": None})]),
    ("[INST]hi[/INST]", "[THINK]plan[/THINK]The [TOOL answer [ARGS] stays.",
     [reasoning("plan"), content("The [TOOL answer [ARGS] stays.")]),
    ("[INST]hi[/INST]", "[TOOL_CALLS]broken[ARGS]{not json",
     [content("[TOOL_CALLS]broken[ARGS]{not json")]),
]


@pytest.mark.parametrize("prompt,text,expected", MISTRAL_CASES)
def test_mistral_syntax(prompt, text, expected):
    check_every_split(lambda: mistral_parser(prompt), text, expected)


def test_hook_gives_each_family_its_parser_and_the_core_a_plain_one():
    hook = load_plugins(env={}).hook
    prompt = "<|im_start|>assistant\n<think>\n"
    parser = hook.imp_output_parser(family="qwen36", prompt=prompt, tools=None)
    assert _run(lambda: parser, ["a</think>b"]) == [reasoning("a"), content("b")]
    assert "<|\"|>" in hook.imp_output_parser(family="gemma4", prompt="", tools=None).markers
    assert "[TOOL_CALLS]" in hook.imp_output_parser(family="mistral", prompt="", tools=None).markers
    plain = hook.imp_output_parser(family="toy", prompt=prompt, tools=None)
    assert isinstance(plain, PlainOutputParser)
    assert _run(lambda: plain, ["<think>x</think>"]) == [content("<think>x</think>")]
