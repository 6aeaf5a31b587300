"""A bounded load test: 32 concurrent streaming clients against a live server on 127.0.0.1.
Every request completes with exactly the text a lone request with its seed gets (none lost,
none duplicated, none mixed with another), and the server's memory stays flat."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from imp_mistral.demo import write_demo_checkpoint
from tests.serve_util import LiveServer

CLIENTS = 32
TOKENS = 24
RSS_GROWTH_LIMIT = 16 * 2**20  # measured: +1 MiB over two rounds of 32 on the CI machine


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ckpt = write_demo_checkpoint(tmp_path_factory.mktemp("load") / "demo")
    live = LiveServer(ckpt, "--served-model-name", "tiny", "--context", "256", "--max-queue", str(CLIENTS),
                      log=tmp_path_factory.mktemp("log") / "load.log")
    yield live
    assert live.stop() == 0


def _stream(url: str, seed: int) -> dict:
    body = {"model": "tiny", "messages": [{"role": "user", "content": f"Tell me a story, number {seed}."}],
            "max_tokens": TOKENS, "seed": seed, "temperature": 0.8, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.monotonic()
    text, ids, finishes, first, done, usage = "", set(), [], None, False, None
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                chunk = json.loads(line[6:])
                ids.add(chunk["id"])
                usage = chunk.get("usage") or usage
                for choice in chunk["choices"]:
                    if choice["delta"].get("content"):
                        first = first or time.monotonic() - t0
                        text += choice["delta"]["content"]
                    if choice["finish_reason"]:
                        finishes.append(choice["finish_reason"])
    return {"seed": seed, "text": text, "ids": ids, "finishes": finishes, "done": done, "usage": usage,
            "first": first, "seconds": time.monotonic() - t0}


def _round(url: str) -> tuple[list[dict], float]:
    t0 = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(lambda s: _stream(url, s), range(CLIENTS)))
    return results, time.monotonic() - t0


def test_32_concurrent_streams_get_their_lone_texts_and_memory_stays_flat(server):
    lone = {s: _stream(server.url, s)["text"] for s in range(CLIENTS)}
    assert len(set(lone.values())) == CLIENTS  # the seeds really give different texts
    rss = psutil.Process(server.proc.pid)
    _round(server.url)  # warm: the first concurrent round sizes the allocator's pools
    warm = rss.memory_info().rss
    seen_ids: set[str] = set()
    for _ in range(2):
        results, seconds = _round(server.url)
        for r in results:
            assert r["done"] and r["finishes"] == ["length"], r
            assert r["usage"]["completion_tokens"] == TOKENS
            assert r["text"] == lone[r["seed"]], r["seed"]
            assert len(r["ids"]) == 1 and not (r["ids"] & seen_ids)
            seen_ids |= r["ids"]
        first = sorted(r["first"] for r in results)
        print(f"\nload: {CLIENTS} streams x {TOKENS} tok in {seconds:.2f} s = {CLIENTS * TOKENS / seconds:.0f} tok/s; "
              f"first token median {first[CLIENTS // 2]:.2f} s, max {first[-1]:.2f} s; "
              f"server rss {rss.memory_info().rss / 2**20:.0f} MiB (warm {warm / 2**20:.0f} MiB)")
    assert len(seen_ids) == 2 * CLIENTS
    assert server.metric("imp_queue_length") == 0
    assert rss.memory_info().rss - warm < RSS_GROWTH_LIMIT
