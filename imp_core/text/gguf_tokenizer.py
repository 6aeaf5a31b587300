"""A working ``tokenizers`` tokenizer (and chat template) from GGUF metadata (docs/formats.md, "GGUF tokenizer and chat template").

``tokenizer.ggml.model``:
- ``gpt2``: byte-level BPE from ``tokens`` (ids in order) and ``merges`` ("a b"); the split
  regex comes from ``tokenizer.ggml.pre`` (llama.cpp's pre-tokenizer names, ``PRE_TOKENIZERS``);
- ``llama``: SentencePiece-style BPE with byte fallback; merges are rebuilt from the token
  scores (a pair merges when both halves and the joined piece are tokens, ranked by the joined
  piece's score), spaces are ``▁``, a leading ``▁`` is added when ``add_space_prefix`` says so.
A full ``tokenizer.huggingface.json`` in the metadata wins over both. Control tokens (type 3)
become special added tokens, user-defined ones (type 4) plain added tokens; BOS/EOS follow
``add_bos_token``/``add_eos_token``; ``eos``, ``eot`` and ``eom`` ids all end generation.
"""

from __future__ import annotations

from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers

from imp_core.errors import CheckpointError
from imp_core.text.tokenizer import Tokenizer

CONTROL, USER_DEFINED, BYTE = 3, 4, 6

_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
           r"\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN35 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|"
           r"\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
           r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|"
           r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# tokenizer.ggml.pre -> (split regex or None for GPT-2's built-in one, NFC normalizer?)
PRE_TOKENIZERS: dict[str, tuple[str | None, bool]] = {
    "default": (None, False), "gpt2": (None, False), "gpt-2": (None, False),
    "llama-bpe": (_LLAMA3, False), "llama3": (_LLAMA3, False), "smaug-bpe": (_LLAMA3, False),
    "qwen2": (_QWEN2, False), "qwen35": (_QWEN35, True),
    "tekken": (_TEKKEN, False),
}


def _tokens(meta: dict[str, Any], where: str) -> list[str]:
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        raise CheckpointError(f"{where}: GGUF metadata has no tokenizer.ggml.tokens")
    return tokens


def _gpt2(meta: dict[str, Any], tokens: list[str], where: str) -> tokenizers.Tokenizer:
    merges = meta.get("tokenizer.ggml.merges")
    if not isinstance(merges, list):
        raise CheckpointError(f"{where}: tokenizer.ggml.model 'gpt2' needs tokenizer.ggml.merges")
    pre = str(meta.get("tokenizer.ggml.pre") or "default")
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(f"{where}: tokenizer.ggml.pre '{pre}' is not known to imp "
                              f"(known: {', '.join(sorted(PRE_TOKENIZERS))})")
    regex, nfc = PRE_TOKENIZERS[pre]
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=pre in ("llama-bpe", "llama3")))
    if nfc:
        tok.normalizer = normalizers.NFC()
    if regex is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return tok


def _spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    vocab = {t: i for i, t in enumerate(tokens) if types[i] not in (CONTROL, BYTE)}
    found = []
    for piece, i in vocab.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                found.append((-scores[i], i, left, right))
    found.sort()
    return [(left, right) for _, _, left, right in found]


def _llama(meta: dict[str, Any], tokens: list[str], types: list[int], where: str) -> tokenizers.Tokenizer:
    scores = meta.get("tokenizer.ggml.scores")
    if not isinstance(scores, list) or len(scores) != len(tokens):
        raise CheckpointError(f"{where}: tokenizer.ggml.model 'llama' needs one tokenizer.ggml.scores per token")
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    model = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=_spm_merges(tokens, scores, types),
                       unk_token=tokens[unk_id] if unk_id is not None else None, fuse_unk=True, byte_fallback=True)
    tok = tokenizers.Tokenizer(model)
    steps = [normalizers.Replace(" ", "▁")]
    if meta.get("tokenizer.ggml.add_space_prefix", True):
        steps.insert(0, normalizers.Prepend("▁"))
    tok.normalizer = normalizers.Sequence(steps)
    strip = [decoders.Strip(" ", 1, 0)] if meta.get("tokenizer.ggml.add_space_prefix", True) else []
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), *strip])
    return tok


def _token(tokens: list[str], meta: dict[str, Any], key: str) -> str | None:
    i = meta.get(f"tokenizer.ggml.{key}_token_id")
    return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None


# metadata key -> (the Python type each value or item must have, whether it is a list)
EXPECTED_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {
    "tokenizer.ggml.tokens": ((str,), True), "tokenizer.ggml.merges": ((str,), True),
    "tokenizer.ggml.token_type": ((int,), True), "tokenizer.ggml.scores": ((int, float), True),
    "tokenizer.ggml.model": ((str,), False), "tokenizer.ggml.pre": ((str,), False),
    "tokenizer.huggingface.json": ((str,), False), "tokenizer.chat_template": ((str,), False),
    **{f"tokenizer.ggml.{k}_token_id": ((int,), False)
       for k in ("bos", "eos", "eot", "eom", "unknown", "padding")},
}


def _check_types(meta: dict[str, Any], source: str) -> None:
    for key, (types, is_list) in EXPECTED_TYPES.items():
        value = meta.get(key)
        if value is None:
            continue
        items = value if is_list and isinstance(value, list) else [value]
        if (is_list and not isinstance(value, list)) or not all(
                isinstance(v, types) and not isinstance(v, bool) for v in items):
            want = " | ".join(t.__name__ for t in types)
            raise CheckpointError(f"{source}: GGUF metadata '{key}' is not {'a list of ' if is_list else 'a '}{want}")
    n = len(meta.get("tokenizer.ggml.tokens") or [])
    for k in ("bos", "eos", "eot", "eom", "unknown", "padding"):
        i = meta.get(f"tokenizer.ggml.{k}_token_id")
        if i is not None and not 0 <= i < n:
            raise CheckpointError(f"{source}: GGUF metadata 'tokenizer.ggml.{k}_token_id' is {i}, expected 0..{n - 1}")


def tokenizer_from_gguf(meta: dict[str, Any], *, source: str = "gguf") -> Tokenizer:
    """The imp ``Tokenizer`` described by a GGUF file's ``tokenizer.*`` metadata."""
    _check_types(meta, source)
    try:
        return _build(meta, source)
    except CheckpointError:
        raise
    except Exception as exc:  # the tokenizers library raises plain Exceptions on bad vocabularies
        detail = " ".join(str(exc).split())[:100]
        raise CheckpointError(f"{source}: the GGUF tokenizer metadata cannot be built ({detail})") from None


def _build(meta: dict[str, Any], source: str) -> Tokenizer:
    tokens = _tokens(meta, source)
    types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    if len(types) != len(tokens):
        raise CheckpointError(f"{source}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
    hf_json = meta.get("tokenizer.huggingface.json")
    kind = meta.get("tokenizer.ggml.model")
    if isinstance(hf_json, str):
        backend = tokenizers.Tokenizer.from_str(hf_json)
    elif kind == "gpt2":
        backend = _gpt2(meta, tokens, source)
    elif kind == "llama":
        backend = _llama(meta, tokens, types, source)
    else:
        raise CheckpointError(f"{source}: tokenizer.ggml.model '{kind}' is not supported by imp (gpt2, llama)")
    backend.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                for i, t in enumerate(types) if t == CONTROL])
    backend.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                        for i, t in enumerate(types) if t == USER_DEFINED])
    eos_ids = [meta[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                 "tokenizer.ggml.eom_token_id") if isinstance(meta.get(k), int)]
    specials = {f"{k}_token": v for k in ("unk", "pad") if (v := _token(tokens, meta, "unknown" if k == "unk" else "padding"))}
    add_bos = meta.get("tokenizer.ggml.add_bos_token")
    add_eos = meta.get("tokenizer.ggml.add_eos_token")
    return Tokenizer.from_parts(backend, chat_template=meta.get("tokenizer.chat_template"),
                                bos_token=_token(tokens, meta, "bos"), eos_token=_token(tokens, meta, "eos"),
                                eos_token_ids=eos_ids, add_bos_token=bool(add_bos) if add_bos is not None else None,
                                add_eos_token=bool(add_eos) if add_eos is not None else None,
                                special_tokens=specials, source=source)
