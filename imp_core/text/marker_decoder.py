"""Incremental detokenizer that keeps the special tokens an output parser must see.

Streams skip special tokens (BOS, padding, control tokens) as ``imp run`` does, except those
whose text is part of a marker of the family's output syntax (Gemma-4's ``<|tool_call>``,
Mistral's ``[TOOL_CALLS]``): those are written out verbatim, in order with the text around them.
"""

from __future__ import annotations

from typing import Any, Sequence


class MarkerDecoder:
    def __init__(self, tokenizer: Any, markers: Sequence[str]) -> None:
        self._tokenizer = tokenizer
        self._decoder = tokenizer.stream_decoder()
        self._kept: dict[int, str] = {}
        for token_id in getattr(tokenizer, "special_token_ids", ()):
            text = tokenizer.id_to_token(token_id)
            if text and any(text in marker for marker in markers):
                self._kept[token_id] = text

    def push(self, token_id: int) -> str:
        kept = self._kept.get(int(token_id))
        if kept is None:
            return self._decoder.push(token_id)
        return self._decoder.flush() + kept

    def flush(self) -> str:
        return self._decoder.flush()
