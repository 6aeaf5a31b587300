"""The chat-template renderer, checked against transformers' own renderer on tricky templates."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from imp_core.text.chat_template import ChatTemplate, ChatTemplateError, render_chat_template
from imp_core.errors import ImpError
from imp_core.text.tokenizer import Tokenizer
from tiny_tokenizer import write_tiny_tokenizer

transformers = pytest.importorskip("transformers")
from transformers.utils.chat_template_utils import (  # noqa: E402
    _normalize_chat_messages,
    render_jinja_template,
)

MESSAGES = [
    {"role": "system", "content": "Système: réponds en français 🙂"},
    {"role": "user", "content": "  What is <b>2+2</b> & why?  ", "name": None},
    {"role": "assistant", "content": "4", "reasoning": "simple arithmetic", "tool_calls": None},
    {"role": "user", "content": [{"type": "text", "text": "and 日本?"}, {"type": "text", "text": "second"}]},
]
TOOLS = [{"type": "function", "function": {"name": "f", "description": "naïve — 天気 <tag> & 'q'",
                                           "parameters": {"b": 1, "a": [1.5, None, True]}}}]

TEMPLATES = {
    "whitespace control (trim_blocks, lstrip_blocks)": """\
{% for m in messages %}
    {% if m.role == 'user' %}
USER: {{ m.content if m.content is string else m.content | map(attribute='text') | join(' / ') }}
    {% else %}
{{ m.role | upper }}: {{ m.content }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}ASSISTANT:{% endif %}""",
    "tojson variants": """\
{{ tools | tojson }}
{{ tools | tojson(indent=2) }}
{{ tools | tojson(sort_keys=True, separators=(',', ':')) }}
{{ tools | tojson(ensure_ascii=True) }}
{{ messages[0] | tojson }}""",
    "loop controls, namespace and dict()": """\
{%- set ns = namespace(n=0, last='') -%}
{%- for m in messages -%}
  {%- if m.role == 'system' %}{% continue %}{% endif -%}
  {%- set ns.n = ns.n + 1 -%}
  {%- set ns.last = m.role -%}
  {%- if loop.index > 3 %}{% break %}{% endif -%}
  [{{ loop.index }}:{{ m.role }}]
{%- endfor -%}
{{ ns.n }} {{ ns.last }} {{ dict(a=1, b=ns.n) | tojson }} {{ dict.fromkeys(['x', 'y']) | tojson }}""",
    "None-valued keys are dropped; reasoning is aliased": """\
{%- for m in messages -%}
{{ m.role }}:{{ 'name' in m }}:{{ 'tool_calls' in m }}:{{ m.reasoning_content | default('-') }}:\
{{ m.thinking | default('-') }};
{%- endfor -%}""",
    "generation blocks and special-token variables": """\
{{- bos_token -}}
{%- for m in messages if m.role == 'assistant' -%}
{% generation %}{{ m.content }}{{ eos_token }}{% endgeneration %}
{%- endfor -%}
|{{ custom_flag }}|{{ tools is none }}|{{ documents is none }}|{{ add_generation_prompt }}""",
}


@pytest.mark.parametrize("name", list(TEMPLATES))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_render_matches_transformers(name, add_generation_prompt):
    text = TEMPLATES[name]
    variables = {"bos_token": "<s>", "eos_token": "</s>", "custom_flag": 7}
    kwargs = {"tools": TOOLS} if "tools" in text and "tools is none" not in text else {}
    # The reference is apply_chat_template's path: normalize (drop None keys), then render.
    expected, _ = render_jinja_template(conversations=[_normalize_chat_messages(MESSAGES)], chat_template=text,
                                        add_generation_prompt=add_generation_prompt, **kwargs, **variables)
    ours = ChatTemplate(text, "test.jinja").render(
        MESSAGES, add_generation_prompt=add_generation_prompt,
        special_tokens={"bos_token": "<s>", "eos_token": "</s>"}, custom_flag=7, **kwargs)
    assert ours == expected[0]


def test_tojson_is_plain_json_dumps():
    # An independent reference: json.dumps itself, with HF's defaults (no HTML escaping, no ASCII escaping).
    out = render_chat_template("{{ tools | tojson }}\n{{ tools | tojson(indent=4, sort_keys=True) }}",
                               [{"role": "user", "content": "x"}], tools=TOOLS)
    assert out == json.dumps(TOOLS, ensure_ascii=False) + "\n" + json.dumps(
        TOOLS, ensure_ascii=False, indent=4, sort_keys=True)


def test_special_tokens_are_overridden_by_kwargs():
    out = ChatTemplate("{{ bos_token }}{{ eos_token }}", "t").render(
        [{"role": "user", "content": "x"}], special_tokens={"bos_token": "<s>", "eos_token": "</s>"},
        eos_token="<END>")
    assert out == "<s><END>"


def test_strftime_now_uses_the_current_date():
    for _ in range(3):  # retry if the day changes between the two clocks
        before = datetime.now().strftime("%Y-%m-%d")
        out = render_chat_template("{{ strftime_now('%Y-%m-%d') }}", [{"role": "user", "content": "x"}])
        if before == datetime.now().strftime("%Y-%m-%d"):
            assert out == before
            return
    pytest.fail("clock kept changing day")


def test_raise_exception_is_an_imp_error_with_the_template_message():
    template = ChatTemplate("{% if messages[0].role != 'user' %}{{ raise_exception('first must be user: '"
                            " + messages[0].role) }}{% endif %}ok", "t.jinja")
    assert template.render([{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(ImpError) as info:
        template.render([{"role": "bot", "content": "x"}])
    assert isinstance(info.value, ChatTemplateError)
    assert str(info.value) == "chat template raised: first must be user: bot"


def test_syntax_error_names_the_source_file(tmp_path):
    write_tiny_tokenizer(tmp_path, style="gemma")
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}\n{% endfo %}")
    with pytest.raises(ChatTemplateError) as info:
        Tokenizer.from_dir(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "chat_template.jinja") in message and "syntax error at line 2" in message
    assert "\n" not in message


def test_syntax_error_in_config_template_names_the_config_key(tmp_path):
    write_tiny_tokenizer(tmp_path, style="chatml")
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ messages[0].content "
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ChatTemplateError, match=r"tokenizer_config\.json:chat_template: chat template syntax"):
        Tokenizer.from_dir(tmp_path)


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__ }}",
    "{% set x = [] %}{{ x.append(1) }}",
    "{% set ns = namespace(_private=1) %}{{ ns._private }}",
])
def test_sandbox_violations_are_imp_errors(template):
    with pytest.raises(ChatTemplateError, match="chat template t failed: SecurityError"):
        ChatTemplate(template, "t").render([{"role": "user", "content": "x"}])


def test_runtime_template_errors_are_one_line_imp_errors():
    with pytest.raises(ChatTemplateError, match="chat template t failed: UndefinedError") as info:
        ChatTemplate("{{ messages[0].content + missing_var }}", "t").render([{"role": "user", "content": "x"}])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("messages", [[], "hello", [["role", "user"]]])
def test_bad_message_lists_are_imp_errors(messages):
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{{ messages }}", "t").render(messages)


def test_inputs_are_not_modified_and_rich_objects_become_placeholders():
    messages = [{"role": "user", "content": "x", "extra": object(), "skip": None}]
    out = ChatTemplate("{{ messages[0].extra }}|{{ 'skip' in messages[0] }}", "t").render(messages)
    assert out == "<object>|False"
    assert "skip" in messages[0]
