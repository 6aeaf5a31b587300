"""Scheduling generations: the HTTP layer submits a job and reads its events; how jobs share
the engine is the scheduler's business alone.

:class:`FifoScheduler` runs one sequence at a time on one worker thread, behind a bounded FIFO
queue. A batched scheduler would implement the same two calls (``submit`` returning a
:class:`JobHandle`, ``close``) and the HTTP layer would not change.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from typing import AsyncIterator, Callable, Protocol

from loguru import logger

from imp_core.serve.jobs import Failed, Finished, GenerationJob, JobEvent


class QueueFull(Exception):
    pass


class NotAccepting(Exception):
    pass


class JobHandle:
    """The consumer's end of one job: an async stream of its events, and a cancel switch."""

    def __init__(self, job: GenerationJob, loop: asyncio.AbstractEventLoop) -> None:
        self.job = job
        self._loop = loop
        self._events: asyncio.Queue[JobEvent] = asyncio.Queue()

    def put(self, event: JobEvent) -> None:
        """Thread-safe: called from the worker."""
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.job.cancelled.set()

    def cancel(self) -> None:
        self.job.cancelled.set()

    async def events(self) -> AsyncIterator[JobEvent]:
        """The job's events up to its Finished or Failed; leaving early cancels the job."""
        done = False
        try:
            while True:
                event = await self._events.get()
                yield event
                if isinstance(event, (Finished, Failed)):
                    done = True
                    return
        finally:
            if not done:
                self.cancel()


class Scheduler(Protocol):
    def submit(self, job: GenerationJob) -> JobHandle: ...

    def stop_accepting(self) -> None: ...

    def close(self) -> None: ...

    @property
    def queue_length(self) -> int: ...


Runner = Callable[[GenerationJob, Callable[[JobEvent], None]], None]


class FifoScheduler:
    """One job at a time on a worker thread; at most ``max_queue`` jobs wait behind the running one."""

    def __init__(self, run: Runner, max_queue: int, *, on_queue_change: Callable[[int], None] = lambda n: None,
                 on_finished: Callable[[GenerationJob, Finished], None] = lambda job, fin: None) -> None:
        self._run = run
        self.max_queue = max_queue
        self._waiting: collections.deque[JobHandle] = collections.deque()
        self._cond = threading.Condition()
        self._accepting = True
        self._closed = False
        self._running: JobHandle | None = None
        self._on_queue_change = on_queue_change
        self._on_finished = on_finished
        self._thread = threading.Thread(target=self._work, name="imp-engine", daemon=True)
        self._thread.start()

    @property
    def queue_length(self) -> int:
        return len(self._waiting)

    def submit(self, job: GenerationJob) -> JobHandle:
        handle = JobHandle(job, asyncio.get_running_loop())
        with self._cond:
            if not self._accepting:
                raise NotAccepting("the server is shutting down")
            if len(self._waiting) + (self._running is not None) > self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} requests waiting)")
            self._waiting.append(handle)
            self._on_queue_change(len(self._waiting))
            self._cond.notify()
        return handle

    def stop_accepting(self) -> None:
        with self._cond:
            self._accepting = False

    def close(self, timeout: float = 10.0) -> None:
        """Stop accepting, end every job (waiting ones and the running one) and stop the worker."""
        with self._cond:
            self._accepting = False
            self._closed = True
            waiting, self._waiting = list(self._waiting), collections.deque()
            self._on_queue_change(0)
            if self._running is not None:
                self._running.cancel()
            self._cond.notify_all()
        for handle in waiting:
            self._emit(handle, Finished("abort", len(handle.job.prompt_ids), 0))
        self._thread.join(timeout)

    def _emit(self, handle: JobHandle, event: JobEvent) -> None:
        if isinstance(event, Finished):  # seen here: a cancelled job's consumer is already gone
            self._on_finished(handle.job, event)
        handle.put(event)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                handle = self._running = self._waiting.popleft()
                self._on_queue_change(len(self._waiting))
            try:
                if handle.job.cancelled.is_set():  # its client left while it waited
                    self._emit(handle, Finished("abort", len(handle.job.prompt_ids), 0))
                else:
                    self._run(handle.job, lambda event, handle=handle: self._emit(handle, event))
            except Exception as exc:  # one failed request must not stop the server
                logger.opt(exception=exc).error("generation failed: {}", exc)
                handle.put(Failed(f"generation failed: {type(exc).__name__}: {exc}"))
            finally:
                with self._cond:
                    self._running = None
