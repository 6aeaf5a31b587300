"""Generated token ids -> parsed output events: detokenize, cut at a stop string, then split
into answer, reasoning and tool calls with the family's output parser."""

from __future__ import annotations

from typing import Any, Sequence

from imp_core.text.marker_decoder import MarkerDecoder
from imp_core.text.output_parser import OutputEvent, OutputParser
from imp_core.text.stop import StopMatcher


class TextStream:
    def __init__(self, tokenizer: Any, parser: OutputParser, stops: Sequence[str] = ()) -> None:
        self._decoder = MarkerDecoder(tokenizer, parser.markers)
        self._matcher = StopMatcher(list(stops))
        self._parser = parser
        self.text = ""  # the raw text emitted so far (stop strings cut off)

    def push(self, token_id: int) -> tuple[list[OutputEvent], bool]:
        """Events completed by one more token, and whether a stop string ended the text."""
        piece, stopped = self._matcher.feed(self._decoder.push(token_id))
        self.text += piece
        return (self._parser.feed(piece) if piece else []), stopped

    def finish(self) -> list[OutputEvent]:
        """What was held back, at the end of the generation."""
        tail = ""
        if not self._matcher.stopped:
            tail, _ = self._matcher.feed(self._decoder.flush())
            tail += self._matcher.flush()
        self.text += tail
        return (self._parser.feed(tail) if tail else []) + self._parser.finish()
