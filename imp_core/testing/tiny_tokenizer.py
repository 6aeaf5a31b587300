"""Tiny tokenizer directories for tests: a real BPE trained in milliseconds, in three families' styles.

``write_tiny_tokenizer(dir, style=...)`` writes tokenizer.json, tokenizer_config.json and (for
"mistral" and "gemma") chat_template.jinja, shaped like the published checkpoints of the target
families, so both imp and ``transformers.AutoTokenizer`` can load the directory:

- "mistral": Tekken-like byte-level BPE; ``<unk>``=0 ``<s>``=1 ``</s>``=2 ``[INST]``=3 ``[/INST]``=4
  ``[SYSTEM_PROMPT]``=5 ``[/SYSTEM_PROMPT]``=6; BOS added by tokenizer.json's TemplateProcessing.
- "chatml": Qwen3.5-like byte-level BPE (NFC, Qwen regex); ``<|endoftext|>``=0 ``<|im_start|>``=1
  ``<|im_end|>``=2, added non-special ``<think>``=3 ``</think>``=4; no BOS; template inline in
  tokenizer_config.json (tools, enable_thinking).
- "gemma": SentencePiece-style BPE with byte fallback (``<0x00>``..``<0xFF>``); ``<pad>``=0 ``<eos>``=1
  ``<bos>``=2 ``<unk>``=3 ``<mask>``=4 ``<|turn>``=5 ``<turn|>``=6; BOS by TemplateProcessing (and
  ``add_bos_token: true`` in the config, as published).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer

TINY_STYLES = ("mistral", "chatml", "gemma")

CORPUS = """\
The quick brown fox jumps over the lazy dog. A small model reads the text and answers the question.
Once upon a time there was a tiny tokenizer that learned to split words into pieces.
It read sentences about cats, dogs, rivers, mountains and the weather in the morning.
Tell me about the history of the printing press, and then write a short poem about the sea.
What is the capital of France? The capital of France is Paris, a city on the river Seine.
Numbers like 1, 2, 3, 42 and 2024 appear in the text, as do symbols: (a + b) * c = d; x != y.
Please answer briefly. Sure! Here is a list: first, second, third. Thank you, that was helpful.
The assistant thinks step by step before it answers, and it stops when the answer is complete.
Café, naïve, résumé and façade keep their accents; Grüße aus München, señor.
日本語のテキストも少し含まれています。中文文本也在这里。한국어 문장도 있습니다.
def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n
"""

# Tekken-style split (the corrected Mistral regex transformers applies with fix_mistral_regex=True).
_MISTRAL_REGEX = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
                  r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen3.5's pre-tokenizer regex (transformers' Qwen3_5Tokenizer).
_QWEN_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}|"
               r" ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

MISTRAL_TEMPLATE = """\
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- if system_message is defined %}
    {{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}
{%- endif %}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {{- '[INST]' + message['content'] + '[/INST]' }}
    {%- elif message['role'] == 'assistant' %}
        {{- message['content'] + eos_token }}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported after the system message!') }}
    {%- endif %}
{%- endfor %}
"""

# Written with plain (undashed) tags on purpose: its output depends on trim_blocks/lstrip_blocks.
CHATML_TEMPLATE = """\
{% set ns = namespace(last_user=-1) %}
{% for message in messages %}
    {% if message.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}
{% endfor %}
{% if tools %}
<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}
# Tools

<tools>
{% for tool in tools %}
{{ tool | tojson }}
{% endfor %}
</tools><|im_end|>
{% elif messages[0].role == 'system' %}
<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{% for message in messages %}
    {% if message.role == 'system' %}
        {% if not loop.first %}{{ raise_exception('System message must be at the beginning.') }}{% endif %}
        {% continue %}
    {% endif %}
<|im_start|>{{ message.role }}
{% if message.role == 'assistant' and message.reasoning_content is defined and loop.index0 > ns.last_user %}
<think>
{{ message.reasoning_content | trim }}
</think>

{% endif %}
{{ message.content }}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% if enable_thinking is defined and enable_thinking is false %}
<think>

</think>

{% endif %}
{% endif %}
"""

GEMMA_TEMPLATE = """\
{{- bos_token -}}
{%- for message in messages -%}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
    {%- if role not in ['system', 'user', 'model'] -%}
        {{- raise_exception('Unknown role: ' + message['role']) -}}
    {%- endif -%}
    {{- '<|turn>' + role + '\n' + message['content'] | trim + '<turn|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|turn>model\n' -}}
{%- endif -%}
"""

_SPECIALS = {
    "mistral": ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"],
    "chatml": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "gemma": ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<|turn>", "<turn|>"],
}
_PLAIN_ADDED = {"mistral": [], "chatml": ["<think>", "</think>"], "gemma": []}


def _pipeline(style: str) -> tuple:
    """(normalizer, pre_tokenizer, decoder) of a style."""
    if style == "mistral":
        return (None,
                pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_MISTRAL_REGEX), behavior="isolated"),
                                         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
                decoders.ByteLevel())
    if style == "chatml":
        return (normalizers.NFC(),
                pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_QWEN_REGEX), behavior="isolated"),
                                         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
                decoders.ByteLevel())
    return (normalizers.Replace(" ", "▁"),
            pre_tokenizers.Split(" ", behavior="merged_with_previous"),
            decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]))


@lru_cache(maxsize=None)
def _trained(style: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Learned tokens (in id order) and merges of the style's BPE on CORPUS."""
    normalizer, pre_tokenizer, _ = _pipeline(style)
    trainer_tok = Tokenizer(models.BPE())
    if normalizer is not None:
        trainer_tok.normalizer = normalizer
    trainer_tok.pre_tokenizer = pre_tokenizer
    byte_level = style != "gemma"
    trainer = BpeTrainer(vocab_size=380 if byte_level else 200, show_progress=False,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if byte_level else [])
    trainer_tok.train_from_iterator(CORPUS.splitlines(keepends=True), trainer)
    model = json.loads(trainer_tok.to_str())["model"]
    tokens = tuple(token for token, _ in sorted(model["vocab"].items(), key=lambda item: item[1]))
    merges = tuple(tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"])
    return tokens, merges


def build_tiny_backend(style: str = "mistral") -> Tokenizer:
    """The ``tokenizers.Tokenizer`` of a style, special tokens at the documented small ids."""
    if style not in TINY_STYLES:
        raise ValueError(f"unknown tiny tokenizer style {style!r}; expected one of {TINY_STYLES}")
    specials, plain = _SPECIALS[style], _PLAIN_ADDED[style]
    fixed = specials + plain + ([f"<0x{b:02X}>" for b in range(256)] if style == "gemma" else [])
    learned, merges = _trained(style)
    vocab = {token: i for i, token in enumerate(fixed)}
    for token in learned:
        vocab.setdefault(token, len(vocab))
    if style == "gemma":
        model = models.BPE(vocab=vocab, merges=list(merges), unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    else:
        model = models.BPE(vocab=vocab, merges=list(merges))
    tok = Tokenizer(model)
    normalizer, pre_tokenizer, decoder = _pipeline(style)
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoder
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain])
    if style == "mistral":
        tok.post_processor = processors.TemplateProcessing(
            single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)])
    elif style == "chatml":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos>:0 $A:0", pair="<bos>:0 $A:0 <bos>:1 $B:1", special_tokens=[("<bos>", 2)])
    return tok


def _added_tokens_decoder(tok: Tokenizer) -> dict[str, dict]:
    return {str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                     "single_word": t.single_word, "special": t.special}
            for i, t in sorted(tok.get_added_tokens_decoder().items())}


def write_tiny_tokenizer(dir: Path, *, style: str = "mistral") -> None:  # noqa: A002 - name from the brief
    """Write a tiny tokenizer directory of ``style`` ("mistral", "chatml" or "gemma") into ``dir``."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_backend(style)
    tok.save(str(dir / "tokenizer.json"))
    config: dict = {"added_tokens_decoder": _added_tokens_decoder(tok), "clean_up_tokenization_spaces": False,
                    "model_max_length": 4096}
    if style == "mistral":
        config.update(tokenizer_class="PreTrainedTokenizerFast", bos_token="<s>", eos_token="</s>",
                      unk_token="<unk>")
        (dir / "chat_template.jinja").write_text(MISTRAL_TEMPLATE, encoding="utf-8")
    elif style == "chatml":
        config.update(tokenizer_class="Qwen3_5Tokenizer", bos_token=None, eos_token="<|im_end|>",
                      pad_token="<|endoftext|>", unk_token=None, chat_template=CHATML_TEMPLATE)
    else:
        def as_added(content: str) -> dict:
            return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False,
                    "rstrip": False, "single_word": False, "special": True}
        config.update(tokenizer_class="GemmaTokenizer", add_bos_token=True, add_eos_token=False,
                      bos_token=as_added("<bos>"), eos_token=as_added("<eos>"), pad_token="<pad>",
                      unk_token="<unk>", mask_token="<mask>", padding_side="left")
        (dir / "chat_template.jinja").write_text(GEMMA_TEMPLATE, encoding="utf-8")
    (dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
