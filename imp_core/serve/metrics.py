"""Prometheus metrics of one server (its own registry, so several servers can live in one process)."""

from __future__ import annotations

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from imp_core.serve.jobs import Finished, GenerationJob


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("imp_requests", "HTTP requests to the API by endpoint and outcome",
                                ["endpoint", "outcome"], registry=r)
        self.queue_length = Gauge("imp_queue_length", "requests waiting for the engine", registry=r)
        self.running = Gauge("imp_requests_running", "generations in progress", registry=r)
        self.prompt_tokens = Counter("imp_prompt_tokens", "prompt tokens prefilled", registry=r)
        self.generated_tokens = Counter("imp_generated_tokens", "tokens generated", registry=r)
        self.time_to_first_token = Histogram(
            "imp_time_to_first_token_seconds", "from the start of a generation to its first token",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.decode_rate = Histogram(
            "imp_decode_tokens_per_second", "decode speed of each generation",
            buckets=(1, 5, 10, 25, 50, 100, 200, 400, 800, 1600), registry=r)

    def job_finished(self, job: GenerationJob, event: Finished) -> None:
        """Called by the scheduler for every job that ends, whether or not its client is still there."""
        self.finished(job.label, event)
        logger.info("{}: prompt {} tok, generated {} tok ({})", job.label, event.prompt_tokens,
                    event.completion_tokens, event.reason)

    def finished(self, endpoint: str, event: Finished) -> None:
        self.requests.labels(endpoint, "cancelled" if event.reason == "abort" else "ok").inc()
        self.prompt_tokens.inc(event.prompt_tokens)
        self.generated_tokens.inc(event.completion_tokens)
        if event.seconds_to_first_token is not None:
            self.time_to_first_token.observe(event.seconds_to_first_token)
        if event.decode_tokens_per_second is not None:
            self.decode_rate.observe(event.decode_tokens_per_second)

    def render(self) -> bytes:
        return generate_latest(self.registry)
