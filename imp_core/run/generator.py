"""The generate loop: prefill, then one decode step per token, streaming text as it comes.

The decode step (``Generator.decode_step`` plus the sampler) is capture-ready: the token and
its position live in static device buffers (``token_buf``, ``pos_buf``), the position advances
on the device, the KV write index and the attention mask are computed on the device from
positions, every cache buffer is preallocated, and the sampler draws on the device from a
counter-based RNG; the step never syncs with the host. On CUDA with ``runtime.cuda_graphs`` the
step (observe + forward + sample) is captured once per sampler and replayed for every token,
which removes the Python and launch overhead of the reference path's many small ops; the host
only reads the sampled token after each replay, to stream it. Prefill runs eagerly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from imp_core.errors import ImpError, PromptTooLongError
from imp_core.model.family import CausalLM

PREFILL_CHUNK = 2048


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0  # excludes the one-time CUDA-graph capture
    capture_seconds: float = 0.0
    finish_reason: str = ""

    @staticmethod
    def _rate(n: int, s: float) -> str:
        return f"{n / s:.1f}" if s > 0 and n > 0 else "-"

    def line(self) -> str:
        # the first generated token comes from the prefill's logits and the step that captures
        # the CUDA graph is timed apart, so neither counts towards the decode rate
        decoded = max(self.generated_tokens - 1 - (1 if self.capture_seconds else 0), 0)
        return (f"prompt {self.prompt_tokens} tok, generated {self.generated_tokens} tok, "
                f"prefill {self._rate(self.prompt_tokens, self.prefill_seconds)} tok/s, "
                f"decode {self._rate(decoded, self.decode_seconds)} tok/s ({self.finish_reason})"
                + (f", graph capture {self.capture_seconds * 1e3:.0f} ms" if self.capture_seconds else ""))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Generator:
    """Owns one sequence's cache and the static decode buffers."""

    def __init__(self, model: CausalLM, context: int, *, prefill_chunk: int = PREFILL_CHUNK,
                 cuda_graphs: bool = False, decoder: Callable[[object], Callable] | None = None) -> None:
        self.model = model
        self.cuda_graphs = cuda_graphs and model.device.type == "cuda"
        self._graphs: dict[int, tuple[object, object]] = {}  # id(sampler) -> (sampler, CUDAGraph)
        self.context = context
        self.prefill_chunk = prefill_chunk
        self.device = model.device
        self.cache = model.new_cache(1, context)
        self.length = 0  # tokens in the cache (host-side bookkeeping, never read from the device)
        self.token_buf = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        self.pos_buf = torch.zeros(1, dtype=torch.long, device=self.device)
        # the fast path's decode step for this cache (None: the reference forward)
        self.decoder = decoder(self.cache) if decoder is not None else None

    def reset(self) -> None:
        self.model.reset_cache(self.cache)
        self.length = 0

    def check_fits(self, n_new: int) -> None:
        if n_new <= 0:
            raise ImpError("the prompt is empty after tokenization")
        if self.length + n_new > self.context:
            raise PromptTooLongError(
                f"prompt is {n_new} tokens but the context holds {self.context - self.length} more "
                f"(runtime.context = {self.context}); shorten the prompt or raise --context")

    @torch.inference_mode()
    def prefill(self, ids: list[int]) -> torch.Tensor:
        """Run ``ids`` through the model after what is cached; return the last logits [1, V]."""
        self.check_fits(len(ids))
        tokens = torch.tensor([ids], dtype=torch.long, device=self.device)
        logits = None
        spans = getattr(self.cache, "set_span", None)
        try:
            for start in range(0, len(ids), self.prefill_chunk):
                chunk = tokens[:, start:start + self.prefill_chunk]
                end = self.length + chunk.shape[1]
                if spans is not None:
                    spans((self.length, end))
                pos = torch.arange(self.length, end, device=self.device)
                logits = self.model.forward(chunk, pos, self.cache, last_only=True)
                self.length = end
        finally:
            if spans is not None:
                spans(None)
        self.pos_buf.fill_(self.length - 1)
        return logits[:, -1]

    @torch.inference_mode()
    def decode_step(self) -> torch.Tensor:
        """Feed ``token_buf`` at position ``pos_buf + 1``; return logits [1, V]. Capture-ready."""
        self.pos_buf.add_(1)
        if self.decoder is not None:
            return self.decoder(self.token_buf, self.pos_buf)
        logits = self.model.forward(self.token_buf, self.pos_buf, self.cache, last_only=True)
        return logits[:, -1]

    @torch.inference_mode()
    def _eager_step(self, sampler) -> None:
        sampler.observe(self.token_buf)
        token = sampler.sample(self.decode_step())
        self.token_buf.copy_(token.view(1, 1))

    def _graphed_step(self, sampler) -> float:
        """One decode step by graph replay; the first step for a sampler runs eagerly on a side
        stream (so lazily created handles and workspaces exist) and then captures the graph.

        The warm-up is a real step, not a throw-away one: recurrent state (DeltaNet) updates in
        place, so a discarded warm-up step would corrupt it. Capture itself executes nothing.
        """
        entry = self._graphs.get(id(sampler))
        if entry is not None and entry[0] is sampler:
            entry[1].replay()
            return 0.0
        t0 = time.perf_counter()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._eager_step(sampler)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._eager_step(sampler)
        self._graphs[id(sampler)] = (sampler, graph)
        torch.cuda.synchronize(self.device)
        return time.perf_counter() - t0  # the warm-up step + capture, reported apart

    def step(self, sampler) -> float:
        """One decode step from ``token_buf`` (graph replay where enabled); returns the seconds a
        first step spent capturing the graph (0 otherwise). The caller advances ``length``."""
        if self.cuda_graphs:
            return self._graphed_step(sampler)
        self._eager_step(sampler)
        return 0.0

    def assume_history(self, n: int) -> None:
        """Benchmarks: mark the first ``n`` positions of every KV cache as filled (their values
        are whatever the buffers hold), so a decode step attends over ``n`` tokens without a
        prefill of ``n`` tokens first. Recurrent states keep their values."""
        self.reset()
        for c in self.cache.layers:
            slot_pos = getattr(c, "slot_pos", None)
            if slot_pos is not None:
                cap = slot_pos.shape[0]
                pos = torch.arange(max(0, n - cap), n, device=slot_pos.device)
                slot_pos[pos % cap if c.ring else pos] = pos
        self.length = n
        self.pos_buf.fill_(n - 1)

    def generate(self, prompt_ids: list[int], sampler, *, max_tokens: int, eos_ids: Iterable[int],
                 on_token: Callable[[int], bool] | None = None) -> tuple[list[int], GenerationStats]:
        """Prefill ``prompt_ids`` then sample up to ``max_tokens`` tokens.

        ``on_token(id)`` is called for every generated token that is not an end-of-sequence
        token; returning True stops generation (a stop string was completed).
        """
        stats = GenerationStats(prompt_tokens=len(prompt_ids))
        eos = set(eos_ids)
        # n tokens need n - 1 decode steps, each writing one cache entry
        budget = min(max_tokens, self.context - self.length - len(prompt_ids) + 1)
        t0 = time.perf_counter()
        logits = self.prefill(prompt_ids)
        sampler.observe(torch.tensor([prompt_ids], dtype=torch.long, device=self.device))
        token = sampler.sample(logits)
        self.token_buf.copy_(token.view(1, 1))
        out: list[int] = []
        tok = int(token.item())  # host read, after (outside) the step
        stats.prefill_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        while True:
            if tok in eos:
                stats.finish_reason = "eos"
                break
            out.append(tok)
            if on_token is not None and on_token(tok):
                stats.finish_reason = "stop string"
                break
            if len(out) >= budget:
                stats.finish_reason = "max tokens" if budget == max_tokens else "context full"
                break
            stats.capture_seconds += self.step(sampler)
            self.length += 1
            tok = int(self.token_buf.item())
        # the last sampled token is not yet in the cache; it is fed on the next turn, if any
        _sync(self.device)
        stats.decode_seconds = time.perf_counter() - t1 - stats.capture_seconds
        stats.generated_tokens = len(out)
        return out, stats
