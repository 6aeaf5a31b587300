"""What the HTTP layer hands the scheduler, and the events it gets back."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Union

from imp_core.run.sampling import SamplingParams
from imp_core.text.output_parser import OutputEvent, OutputParser


@dataclass
class GenerationJob:
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int
    stops: list[str]
    ignore_eos: bool
    parser: OutputParser
    label: str = ""  # who asked (the endpoint), for metrics and logs
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Delta:
    events: list[OutputEvent]


@dataclass(frozen=True)
class Finished:
    """``reason``: OpenAI's finish_reason ("stop", "length"), or "abort" when the generation
    was cancelled (client gone, server stopping)."""

    reason: str
    prompt_tokens: int
    completion_tokens: int
    seconds_to_first_token: float | None = None
    decode_tokens_per_second: float | None = None


@dataclass(frozen=True)
class Failed:
    message: str


JobEvent = Union[Delta, Finished, Failed]
