"""A multi-turn conversation that keeps its cache: each turn prefills only its new tokens.

The cache holds the conversation as the model saw it: the first prompt, every generated token,
then each later turn's text. A later turn is not re-rendered from the whole history (a
template may render past turns differently, e.g. drop their reasoning, and recurrent state such
as Qwen3.6's DeltaNet cannot be rolled back to a common prefix); instead the template renders
the history with a placeholder answer plus the new user message, and the text after the
placeholder (the end of the answer's turn, the user's turn, the generation prompt) is what the
turn appends. The last sampled token is never in the cache when a generation ends (see
``Generator.generate``); it is fed first, unless it was the end-of-turn token that the
template's text supplies anyway.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from imp_core.errors import ImpError
from imp_core.run.generator import GenerationStats
from imp_core.run.sampling import SamplingParams
from imp_core.run.session import Session
from imp_core.run.text_stream import TextStream
from imp_core.text.output_parser import OutputEvent

PLACEHOLDER = "\u2063imp-answer-placeholder\u2063"


@dataclass
class TurnResult:
    ids: list[int]  # the generated tokens (end-of-sequence excluded)
    stats: GenerationStats
    cached_tokens: int  # tokens of earlier turns reused from the cache
    events: list[OutputEvent] = field(default_factory=list)
    cancelled: bool = False

    @property
    def answer(self) -> str:
        return "".join(e.text for e in self.events if e.kind == "content")


class ChatSession:
    def __init__(self, session: Session, params: SamplingParams, *, max_tokens: int, hook: Any,
                 system: str | None = None, cuda_graphs: bool = False) -> None:
        self.session = session
        self.tokenizer = session.tokenizer
        if not self.tokenizer.has_chat_template:
            raise ImpError("this checkpoint has no chat template; imp chat needs one (use imp run --raw)")
        self.generator = session.generator(cuda_graphs=cuda_graphs)
        self.sampler = session.sampler(params)
        self.max_tokens = max_tokens
        self.hook = hook
        self.system = system
        self.reset()

    def reset(self) -> None:
        self.generator.reset()
        self.sampler.reset()
        self.messages: list[dict[str, str]] = [{"role": "system", "content": self.system}] if self.system else []
        self.transcript: list[int] = []  # every token of the conversation so far, cached or pending
        self._pending: list[int] = []

    def turn_prompt(self, user_text: str) -> tuple[list[int], str]:
        """The tokens this turn appends, and their text (for the output parser)."""
        tok = self.tokenizer
        user = {"role": "user", "content": user_text}
        if not self.transcript:
            text = tok.apply_chat_template([*self.messages, user], add_generation_prompt=True)
            return tok.encode(text, add_special_tokens=False), text
        history = [*self.messages[:-1], {"role": "assistant", "content": PLACEHOLDER}, user]
        rendered = tok.apply_chat_template(history, add_generation_prompt=True)
        at = rendered.rfind(PLACEHOLDER)
        if at < 0:
            raise ImpError("the chat template dropped the previous answer; cannot continue the cached conversation")
        text = rendered[at + len(PLACEHOLDER):]
        return self._pending + tok.encode(text, add_special_tokens=False), text

    def answer(self, user_text: str, *, on_event: Callable[[OutputEvent], None] = lambda e: None,
               cancel: threading.Event | None = None) -> TurnResult:
        ids, text = self.turn_prompt(user_text)
        self.generator.check_fits(len(ids))
        cached = self.generator.length
        parser = self.hook.imp_output_parser(family=self.session.inspection.spec.family, prompt=text, tools=None)
        stream = TextStream(self.tokenizer, parser)
        events: list[OutputEvent] = []

        def emit(new: list[OutputEvent]) -> None:
            events.extend(new)
            for event in new:
                on_event(event)

        def on_token(token_id: int) -> bool:
            if cancel is not None and cancel.is_set():
                return True
            new, stopped = stream.push(token_id)
            emit(new)
            return stopped

        out, stats = self.generator.generate(ids, self.sampler, max_tokens=self.max_tokens,
                                             eos_ids=self.tokenizer.eos_token_ids, on_token=on_token)
        cancelled = cancel is not None and cancel.is_set()
        emit(stream.finish())
        self.transcript = self.transcript[:cached] + ids + out  # the old pending tokens lead ``ids``
        self._pending = self.transcript[self.generator.length:]
        self.messages += [{"role": "user", "content": user_text},
                          {"role": "assistant", "content": "".join(e.text for e in events if e.kind == "content")}]
        return TurnResult(out, stats, cached, events, cancelled)
