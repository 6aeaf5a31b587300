"""Runs one generation job on the loaded model (on the scheduler's worker thread)."""

from __future__ import annotations

import time
from typing import Callable

from imp_core.run.session import Session
from imp_core.run.text_stream import TextStream
from imp_core.serve.jobs import Delta, Finished, GenerationJob, JobEvent

FINISH_REASONS = {"eos": "stop", "stop string": "stop", "max tokens": "length", "context full": "length"}


class Engine:
    """One sequence's cache, reused by every request (reset in between).

    CUDA graphs stay off: a graph belongs to one sampler and every request brings its own
    sampling parameters, so each request would pay a capture for a single use.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self.context = session.inspection.context
        self.generator = session.generator(cuda_graphs=False)

    def run(self, job: GenerationJob, emit: Callable[[JobEvent], None]) -> None:
        tok, gen = self.session.tokenizer, self.generator
        gen.reset()
        sampler = self.session.sampler(job.params)
        stream = TextStream(tok, job.parser, job.stops)
        start = time.perf_counter()
        first_token_at: list[float] = []

        def on_token(token_id: int) -> bool:
            if job.cancelled.is_set():
                return True
            if not first_token_at:
                first_token_at.append(time.perf_counter() - start)
            events, stopped = stream.push(token_id)
            if events:
                emit(Delta(events))
            return stopped

        _, stats = gen.generate(job.prompt_ids, sampler, max_tokens=job.max_tokens,
                                eos_ids=() if job.ignore_eos else tok.eos_token_ids, on_token=on_token)
        if job.cancelled.is_set():
            emit(Finished("abort", stats.prompt_tokens, stats.generated_tokens))
            return
        tail = stream.finish()
        if tail:
            emit(Delta(tail))
        decoded = stats.generated_tokens - 1
        rate = decoded / stats.decode_seconds if decoded > 0 and stats.decode_seconds > 0 else None
        emit(Finished(FINISH_REASONS[stats.finish_reason], stats.prompt_tokens, stats.generated_tokens,
                      first_token_at[0] if first_token_at else None, rate))
