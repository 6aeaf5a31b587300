"""`imp chat`: an interactive conversation in the terminal."""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO

from imp_core.cli.run_command import sampling_params
from imp_core.errors import PromptTooLongError
from imp_core.logging import log_plan
from imp_core.plugin.manager import PluginSet
from imp_core.run.chat import ChatSession
from imp_core.run.session import load_session
from imp_core.settings.resolve import ResolvedSettings
from imp_core.text.output_parser import OutputEvent

HELP = "type a message; /reset starts over, /exit (or Ctrl-D) leaves, Ctrl-C stops an answer"
DIM, PLAIN = "\x1b[2m", "\x1b[0m"


@contextmanager
def ctrl_c_sets(flag: threading.Event) -> Iterator[None]:
    """While an answer streams, Ctrl-C asks it to stop after the current token (an exception in
    the middle of a forward pass could leave the cache half-written)."""
    previous = signal.signal(signal.SIGINT, lambda signum, frame: flag.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _Printer:
    """Streams answer text plainly, reasoning dimmed (on a terminal) and tool calls on a line each."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.color = out.isatty()
        self.kind = "content"

    def __call__(self, event: OutputEvent) -> None:
        if event.kind == "tool_call":
            self.out.write(f"\n[tool call] {event.tool_call.name}({event.tool_call.arguments})\n")
        elif event.kind != self.kind and self.color:
            self.out.write(DIM if event.kind == "reasoning" else PLAIN)
        if event.kind != "tool_call":
            self.out.write(event.text)
            self.kind = event.kind
        self.out.flush()

    def end(self) -> None:
        self.out.write((PLAIN if self.color and self.kind != "content" else "") + "\n")
        self.out.flush()
        self.kind = "content"


def chat_loop(model_path: Path, resolved: ResolvedSettings, plugins: PluginSet, *, system: str | None,
              stdin: TextIO, out: TextIO) -> None:
    session = load_session(model_path, resolved, plugins)
    resolved = session.inspection.settings
    params = sampling_params(resolved)
    chat = ChatSession(session, params, max_tokens=resolved.settings.runtime.max_tokens, hook=plugins.hook,
                       system=system, cuda_graphs=resolved.settings.runtime.cuda_graphs)
    log_plan("resolved plan", session.inspection.plan + [("sampling", f"seed {chat.sampler.seed}")])
    print(HELP, file=sys.stderr)
    while True:
        try:
            out.write("> ")
            out.flush()
            line = stdin.readline()
        except KeyboardInterrupt:  # at the prompt: drop the line, keep chatting
            out.write("\n")
            continue
        if not line:
            out.write("\n")
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            chat.reset()
            print("(conversation reset)", file=sys.stderr)
            continue
        stop = threading.Event()
        printer = _Printer(out)
        try:
            with ctrl_c_sets(stop):
                result = chat.answer(text, on_event=printer, cancel=stop)
        except PromptTooLongError as exc:
            print(f"error: {exc}; /reset to start over", file=sys.stderr)
            continue
        printer.end()
        print(f"{result.stats.line()}, {result.cached_tokens} tok reused from the cache"
              + (" [stopped]" if result.cancelled else ""), file=sys.stderr, flush=True)
