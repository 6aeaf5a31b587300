"""Tokenizer, StreamDecoder and StopMatcher, checked against transformers' own tokenizer."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from imp_core.text.chat_template import ChatTemplateError
from imp_core.errors import CheckpointError, ConfigError, ImpError
from imp_core.text.stop import StopMatcher
from imp_core.text.tokenizer import Tokenizer
from tiny_tokenizer import CORPUS, TINY_STYLES, build_tiny_backend, write_tiny_tokenizer

transformers = pytest.importorskip("transformers")

SPECIAL_STRINGS = {
    "mistral": ["<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]"],
    "chatml": ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>"],
    "gemma": ["<bos>", "<eos>", "<|turn>", "<turn|>", "<pad>"],
}
UNICODE_POOL = "aeiouéüñßçøåЖжλπ日本語中文한국어🙂🚀👍🏽❤️\u200d🔥€£¥→∑√"


def random_text(rng: random.Random, style: str) -> str:
    """Corpus words, rare unicode (CJK, emoji, ZWJ), whitespace runs and special-token strings, mixed."""
    words = CORPUS.split()
    parts = []
    for _ in range(rng.randint(5, 40)):
        kind = rng.random()
        if kind < 0.5:
            parts.append(rng.choice(words))
        elif kind < 0.75:
            parts.append("".join(rng.choice(UNICODE_POOL) for _ in range(rng.randint(1, 6))))
        elif kind < 0.9:
            parts.append(rng.choice([" ", "  ", "\n", "\n\n", "\t", " \n "]))
        else:
            parts.append(rng.choice(SPECIAL_STRINGS[style]))
        parts.append(rng.choice(["", " ", " ", "\n"]))
    return "".join(parts)


@pytest.fixture(scope="module", params=TINY_STYLES)
def pair(request, tmp_path_factory):
    """(style, directory, our Tokenizer, transformers' AutoTokenizer) for one tiny style."""
    style = request.param
    path = tmp_path_factory.mktemp(f"tok_{style}")
    write_tiny_tokenizer(path, style=style)
    return style, path, Tokenizer.from_dir(path), transformers.AutoTokenizer.from_pretrained(path)


# ---- the tiny tokenizer helper itself ---------------------------------------------------------------

@pytest.mark.parametrize("style", TINY_STYLES)
def test_tiny_tokenizer_has_documented_special_ids_and_is_deterministic(style, tmp_path):
    write_tiny_tokenizer(tmp_path / "a", style=style)
    write_tiny_tokenizer(tmp_path / "b", style=style)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    tok = Tokenizer.from_dir(tmp_path / "a")
    expected = {
        "mistral": {"<unk>": 0, "<s>": 1, "</s>": 2, "[INST]": 3, "[/INST]": 4},
        "chatml": {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2},
        "gemma": {"<pad>": 0, "<eos>": 1, "<bos>": 2},
    }[style]
    assert {t: tok.token_to_id(t) for t in expected} == expected
    assert 300 <= tok.vocab_size <= 500


# ---- encode / decode against transformers -------------------------------------------------------------

def test_encode_matches_transformers(pair):
    style, _, ours, hf = pair
    rng = random.Random(f"encode-{style}")
    texts = [CORPUS, "Hello world!", " leading space", "tabs\tand\nnewlines\n\n", "🙂", "日本語"]
    texts += [random_text(rng, style) for _ in range(40)]
    for text in texts:
        for add_special in (True, False):
            assert ours.encode(text, add_special_tokens=add_special) == hf.encode(
                text, add_special_tokens=add_special), (text, add_special)


def test_bos_is_added_only_where_the_family_wants_it(pair):
    style, _, ours, hf = pair
    ids = ours.encode("Hello")
    if style == "chatml":
        assert ours.bos_token is None and ours.bos_token_id is None
        assert ids == ours.encode("Hello", add_special_tokens=False)
    else:
        assert ids[0] == ours.bos_token_id == hf.bos_token_id
        assert ids[1:] == ours.encode("Hello", add_special_tokens=False)


def test_decode_matches_transformers(pair):
    style, _, ours, hf = pair
    rng = random.Random(f"decode-{style}")
    for _ in range(60):
        ids = [rng.randrange(ours.vocab_size) for _ in range(rng.randint(1, 30))]
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), ids
    text = random_text(rng, style)
    ids = ours.encode(text)
    assert ours.decode(ids, skip_special_tokens=False) == hf.decode(ids, skip_special_tokens=False)


def test_vocab_and_special_ids_match_transformers(pair):
    style, _, ours, hf = pair
    assert ours.vocab_size == len(hf)
    assert ours.bos_token == hf.bos_token and ours.eos_token == hf.eos_token
    assert ours.bos_token_id == hf.bos_token_id
    assert ours.eos_token_ids == {hf.eos_token_id}
    assert ours.special_token_ids == set(hf.all_special_ids) | {
        i for i, t in hf.added_tokens_decoder.items() if t.special}


# ---- chat templates against transformers ----------------------------------------------------------------

CONVERSATIONS = [
    [{"role": "user", "content": "Hello there!"}],
    [{"role": "system", "content": "You are terse. Antworte auf Deutsch, bitte."},
     {"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be kind."},
     {"role": "user", "content": "Hi 🙂"},
     {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a short poem about the sea.\nTwo lines."}],
    [{"role": "user", "content": "  padded  "},
     {"role": "assistant", "content": "ok", "tool_calls": None},
     {"role": "user", "content": "日本語で答えて"}],
]


@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(pair, conversation, add_generation_prompt):
    _, _, ours, hf = pair
    messages = CONVERSATIONS[conversation]
    text = ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    assert text == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours.encode_chat(messages, add_generation_prompt=add_generation_prompt) == hf.apply_chat_template(
        messages, tokenize=True, return_dict=False, add_generation_prompt=add_generation_prompt)


def test_chatml_template_kwargs_tools_and_reasoning_match_transformers(tmp_path):
    write_tiny_tokenizer(tmp_path, style="chatml")
    ours, hf = Tokenizer.from_dir(tmp_path), transformers.AutoTokenizer.from_pretrained(tmp_path)
    tools = [{"type": "function", "function": {"name": "météo", "description": "Wetter für eine Stadt — 天気",
                                               "parameters": {"type": "object", "properties": {
                                                   "city": {"type": "string"}}, "required": ["city"]}}}]
    messages = [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather in Köln?"},
                {"role": "assistant", "content": "Sunny.", "reasoning": "  The user wants weather.  "}]
    for kwargs in ({}, {"tools": tools}, {"enable_thinking": False}, {"enable_thinking": True},
                   {"tools": tools, "enable_thinking": False}):
        for agp in (True, False):
            assert ours.apply_chat_template(messages, add_generation_prompt=agp, **kwargs) == \
                hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=agp, **kwargs), kwargs
    rendered = ours.apply_chat_template(messages[:2], tools=tools, enable_thinking=False)
    assert "Wetter für eine Stadt — 天気" in rendered  # tojson keeps non-ASCII
    assert rendered.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_named_templates_and_jinja_precedence_match_transformers(tmp_path):
    write_tiny_tokenizer(tmp_path, style="mistral")
    (tmp_path / "chat_template.jinja").unlink()
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = [
        {"name": "default", "template": "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"},
        {"name": "tool_use", "template": "{{ tools | tojson(indent=2, sort_keys=True) }}|{{ messages | length }}"},
    ]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    ours, hf = Tokenizer.from_dir(tmp_path), transformers.AutoTokenizer.from_pretrained(tmp_path)
    messages = CONVERSATIONS[2]
    tools = [{"name": "f", "z": 1, "a": "ü"}]
    for kwargs in ({}, {"tools": tools}):
        assert ours.apply_chat_template(messages, **kwargs) == hf.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **kwargs)
    assert ours.apply_chat_template(messages, tools=tools).endswith("|4")

    (tmp_path / "chat_template.jinja").write_text("JINJA {{ messages[0].content }}")
    config["chat_template"] = "INLINE"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    ours, hf = Tokenizer.from_dir(tmp_path), transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert ours.apply_chat_template(messages) == "JINJA Be kind."
    assert ours.apply_chat_template(messages) == hf.apply_chat_template(messages, tokenize=False)


def test_raise_exception_in_template_is_an_imp_error(pair):
    style, _, ours, _ = pair
    if style == "chatml":
        bad = [{"role": "user", "content": "a"}, {"role": "system", "content": "late system"}]
        message = "System message must be at the beginning."
    elif style == "mistral":
        bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
        message = "Conversation roles must alternate user/assistant/user/assistant/..."
    else:
        bad = [{"role": "tool", "content": "a"}]
        message = "Unknown role: tool"
    with pytest.raises(ImpError) as info:
        ours.apply_chat_template(bad)
    assert str(info.value) == f"chat template raised: {message}"
    assert isinstance(info.value, ConfigError)


# ---- loading: files, errors, eos union ------------------------------------------------------------------

def test_eos_ids_are_the_union_of_generation_config_config_and_tokenizer(tmp_path):
    write_tiny_tokenizer(tmp_path, style="gemma")
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 6], "bos_token_id": 2}))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 5, "text_config": {"eos_token_id": [7]}}))
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.eos_token_ids == frozenset({1, 5, 6, 7})
    (tmp_path / "config.json").unlink()
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 6}))
    assert Tokenizer.from_dir(tmp_path).eos_token_ids == frozenset({1, 6})


def test_bad_eos_in_generation_config_names_file_and_key(tmp_path):
    write_tiny_tokenizer(tmp_path, style="mistral")
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": ["</s>"]}))
    with pytest.raises(ConfigError, match=r"generation_config\.json:eos_token_id must be a token id"):
        Tokenizer.from_dir(tmp_path)


def test_missing_tokenizer_json_names_dir_and_file(tmp_path):
    with pytest.raises(CheckpointError) as info:
        Tokenizer.from_dir(tmp_path)
    assert str(tmp_path) in str(info.value) and "tokenizer.json" in str(info.value)
    assert "\n" not in str(info.value)


def test_corrupt_files_are_checkpoint_errors(tmp_path):
    write_tiny_tokenizer(tmp_path, style="mistral")
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="tokenizer_config.json: not valid JSON"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(CheckpointError, match="tokenizer.json: not a valid tokenizers file"):
        Tokenizer.from_dir(tmp_path)


def test_tokens_only_the_config_knows_are_added_like_transformers(tmp_path):
    write_tiny_tokenizer(tmp_path, style="mistral")
    base_size = Tokenizer.from_dir(tmp_path).vocab_size
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["pad_token"] = "<pad_new>"
    config["extra_special_tokens"] = ["<extra_x>"]
    config["added_tokens_decoder"]["999"] = {"content": "<tool_x>", "special": False, "normalized": False,
                                             "lstrip": False, "rstrip": False, "single_word": False}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    ours, hf = Tokenizer.from_dir(tmp_path), transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert ours.vocab_size == len(hf) == base_size + 3
    text = "a<pad_new>b <extra_x> c<tool_x>d"
    assert ours.encode(text) == hf.encode(text)
    ids = ours.encode(text)
    for skip in (True, False):
        assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    assert ours.pad_token_id == hf.pad_token_id == ours.token_to_id("<pad_new>")


def test_no_chat_template_is_an_imp_error(tmp_path):
    write_tiny_tokenizer(tmp_path, style="mistral")
    (tmp_path / "chat_template.jinja").unlink()
    tok = Tokenizer.from_dir(tmp_path)
    assert not tok.has_chat_template
    with pytest.raises(ChatTemplateError, match="no chat template"):
        tok.apply_chat_template(CONVERSATIONS[0])


def test_add_bos_token_applies_when_tokenizer_json_has_no_post_processor(tmp_path):
    # transformers 5.24 ignores add_bos_token here; imp keeps the BOS the checkpoint asks for.
    write_tiny_tokenizer(tmp_path, style="mistral")
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    data["post_processor"] = None
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    plain = Tokenizer.from_dir(tmp_path).encode("Hello")
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.update(add_bos_token=True, add_eos_token=True)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.encode("Hello") == [1, *plain, 2]
    assert tok.encode("Hello", add_special_tokens=False) == plain


def test_from_parts_builds_the_same_tokenizer_as_from_dir(tmp_path):
    write_tiny_tokenizer(tmp_path, style="gemma")
    from_dir = Tokenizer.from_dir(tmp_path)
    backend = build_tiny_backend("gemma")
    backend.post_processor = None  # as a GGUF-built backend would come: BOS from the add_bos_token flag
    from_parts = Tokenizer.from_parts(
        backend, chat_template=(tmp_path / "chat_template.jinja").read_text(), bos_token="<bos>",
        eos_token="<eos>", eos_token_ids=[6], add_bos_token=True, special_tokens={"pad_token": "<pad>"})
    assert from_parts.eos_token_ids == frozenset({1, 6})
    assert from_parts.bos_token_id == 2 and from_parts.vocab_size == from_dir.vocab_size
    rng = random.Random("from-parts")
    for _ in range(10):
        text = random_text(rng, "gemma")
        assert from_parts.encode(text) == from_dir.encode(text)
    for messages in CONVERSATIONS:
        assert from_parts.encode_chat(messages) == from_dir.encode_chat(messages)
    assert Tokenizer.from_parts(build_tiny_backend("chatml"), chat_template=None, bos_token=None,
                                eos_token="<|im_end|>", eos_token_ids=[]).eos_token_ids == frozenset({2})
    # Explicit flags replace the backend's own post-processor (which adds <s> for this style).
    mistral = dict(chat_template=None, bos_token="<s>", eos_token="</s>", eos_token_ids=[])
    plain = Tokenizer.from_parts(build_tiny_backend("mistral"), **mistral).encode("Hi", add_special_tokens=False)
    assert Tokenizer.from_parts(build_tiny_backend("mistral"), **mistral).encode("Hi") == [1, *plain]
    assert Tokenizer.from_parts(build_tiny_backend("mistral"), add_bos_token=False, **mistral).encode("Hi") == plain
    assert Tokenizer.from_parts(build_tiny_backend("mistral"), add_bos_token=False, add_eos_token=True,
                                **mistral).encode("Hi") == [*plain, 2]


# ---- streaming detokenization ----------------------------------------------------------------------------

def stream(tok: Tokenizer, ids: list[int], skip: bool = True) -> list[str]:
    decoder = tok.stream_decoder(skip_special_tokens=skip)
    return [decoder.push(i) for i in ids] + [decoder.flush()]


@pytest.mark.parametrize("text", [
    "Emoji 🙂🚀👍🏽 and a family 👨‍👩‍👧 in a row.",
    "日本語のテキストと中文文本, mixed with English and 한국어.",
    "Café naïve Grüße → ∑√ €5",
    "🙂",
])
def test_stream_decoder_on_multibyte_text_equals_full_decode(pair, text):
    _, _, ours, _ = pair
    ids = ours.encode(text)
    pieces = stream(ours, ids)
    assert "".join(pieces) == ours.decode(ids) == text
    assert not any("\ufffd" in piece for piece in pieces)  # partial characters were held back
    if len(text) > 1:
        assert sum(1 for piece in pieces[:-1] if piece) >= 2  # text streamed before the end


def test_stream_decoder_on_random_ids_equals_full_decode(pair):
    style, _, ours, _ = pair
    rng = random.Random(f"stream-{style}")
    byte_ids = [i for i in range(ours.vocab_size) if ours.is_byte_piece(i)]
    assert (len(byte_ids) == 256) == (style == "gemma")
    for _ in range(150):
        pool = range(ours.vocab_size)
        ids = [rng.choice(byte_ids) if byte_ids and rng.random() < 0.4 else rng.choice(pool)
               for _ in range(rng.randint(1, 25))]
        for skip in (True, False):
            assert "".join(stream(ours, ids, skip)) == ours.decode(ids, skip_special_tokens=skip), (ids, skip)


def test_stream_decoder_skips_special_tokens_like_decode(pair):
    style, _, ours, _ = pair
    text = "".join(f"word{i} {s} " for i, s in enumerate(SPECIAL_STRINGS[style]))
    ids = ours.encode(text)
    assert "".join(stream(ours, ids, skip=True)) == ours.decode(ids, skip_special_tokens=True)
    assert "".join(stream(ours, ids, skip=False)) == ours.decode(ids, skip_special_tokens=False)


# ---- stop strings ----------------------------------------------------------------------------------------

def run_stop(stops, pieces):
    matcher = StopMatcher(stops)
    out, stopped_at = [], None
    for index, piece in enumerate(pieces):
        text, stopped = matcher.feed(piece)
        out.append(text)
        if stopped and stopped_at is None:
            stopped_at = index
    return "".join(out) + matcher.flush(), stopped_at


def test_stop_string_split_across_pieces():
    assert run_stop(["</s>"], ["Hello wor", "ld<", "/", "s>", " never shown"]) == ("Hello world", 3)
    assert run_stop(["User:"], ["Sure.\nUs", "er: hi"]) == ("Sure.\n", 1)
    assert run_stop(["User:"], ["Sure.\nUs", "e it"]) == ("Sure.\nUse it", None)
    assert run_stop(["ab"], ["a", "a", "a", "b"]) == ("aa", 3)


def test_stop_matcher_holds_back_only_possible_stop_starts():
    matcher = StopMatcher(["<end>", "STOP"])
    assert matcher.feed("text <e") == ("text ", False)
    assert matcher.feed("nd") == ("", False)
    assert matcher.feed("ing S") == ("<ending ", False)
    assert matcher.feed("TO") == ("", False)
    assert matcher.feed("P!") == ("", True)
    assert matcher.feed("more") == ("", True) and matcher.flush() == ""


def test_stop_matcher_on_random_streams_matches_whole_text_search():
    rng = random.Random("stops")
    for _ in range(400):
        stops = ["".join(rng.choice("ab\n") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        text = "".join(rng.choice("abc\n") for _ in range(rng.randint(0, 40)))
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 8))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        emitted, stopped_at = run_stop(stops, pieces)
        seen = ""
        for index, piece in enumerate(pieces):  # reference: search the whole text received so far
            seen += piece
            found = [seen.find(s) for s in stops if s in seen]
            if found:
                assert (emitted, stopped_at) == (seen[:min(found)], index), (stops, pieces)
                break
        else:
            assert (emitted, stopped_at) == (text, None), (stops, pieces)


def test_empty_stop_string_is_a_config_error():
    with pytest.raises(ConfigError, match="non-empty"):
        StopMatcher(["</s>", ""])
