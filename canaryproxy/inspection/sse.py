"""An incremental decoder for server-sent events (the WHATWG "event stream" format).

Bytes arrive in arbitrary pieces; any split gives the same events with the same offsets. Lines end
in "\\n", "\\r\\n" or "\\r"; an event ends at a blank line; `data:` lines join with "\\n"; an event
without data is not dispatched; comments (":") and `id:`/`retry:`/unknown fields change nothing we
read. A "\\r" that ends the bytes seen so far is held until the next byte says whether "\\n" follows
(as httpx's line decoder does), so "\\r\\n" split between two chunks is one line ending. At the end of
the stream an unterminated event is discarded, as a browser would.

Each event carries its byte span in the stream, `start` (just after the previous blank line) to `end`
(just after its own blank line), so a caller can cut one event out of what it forwards.

The shapes servers send take no per-line work: a chunk that is exactly one event (a `data:` line,
or an `event:` and a `data:` line, as Anthropic and the responses API send), or several `data:`
events with nothing left over, all with "\\n" line endings.
"""

from __future__ import annotations

import re

# (event type, data, start, end). A plain tuple: building one per event costs a third of an object.
# The type stays bytes: the inspected APIs repeat it inside the data, so nothing decodes it.
SSEEvent = tuple[bytes, bytes, int, int]

_LINE_END = re.compile(rb"\r\n?|\n")
_BOM = b"\xef\xbb\xbf"
_CR = 13
_LF = 10
_SPACE = 32
_COLON = 58


class SSEDecoder:
    __slots__ = ("_tail", "_tail_at", "_data", "_event_type", "_idle", "event_start")

    def __init__(self) -> None:
        self._tail = b""  # bytes after the last complete line
        self._tail_at = 0  # stream offset of _tail[0]
        self._data: list[bytes] | None = None  # data lines of the event being read
        self._event_type = b""
        self._idle = True  # no partial line, no field of an unfinished event
        # Stream offset just after the last blank line: every byte before it belongs to an event
        # that is complete (dispatched, or empty and dropped).
        self.event_start = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not self._idle or b"\r" in chunk or not chunk.endswith(b"\n\n"):
            return self._feed_lines(chunk)
        # Nothing pending, "\n" line endings, and the chunk ends at a blank line.
        last = len(chunk) - 2
        newline = chunk.find(b"\n")
        if newline == last and chunk.startswith(b"data:"):
            return [self._whole_event(chunk, b"", _value_at(chunk, 5))]
        if (
            chunk.startswith(b"event:")
            and chunk.startswith(b"data:", newline + 1)
            and chunk.find(b"\n", newline + 1) == last
        ):
            event_type = chunk[_value_at(chunk, 6) : newline]
            return [self._whole_event(chunk, event_type, _value_at(chunk, newline + 6))]
        if chunk.endswith(b"\n\n\n"):
            return self._feed_lines(chunk)
        # Several events: split on blank lines.
        events: list[SSEEvent] = []
        start = self.event_start
        offset = self._tail_at  # stream offset of chunk[0]
        position = 0
        blocks = chunk.split(b"\n\n")
        blocks.pop()  # the empty piece after the final blank line
        for block in blocks:
            if not block.startswith(b"data: ") or b"\n" in block:
                # Anything less plain (comments, event types, several data lines, leading blank
                # lines): let the line decoder read the rest of the chunk.
                self.event_start = start
                self._tail_at = offset + position
                events.extend(self._feed_lines(chunk[position:]))
                return events
            end = offset + position + len(block) + 2
            events.append((b"", block[6:], start, end))
            position += len(block) + 2
            start = end
        self.event_start = start
        self._tail_at = offset + position
        return events

    @property
    def at_event_boundary(self) -> bool:
        """Every byte fed so far belongs to a finished event: the next byte starts a new one."""
        return self._idle and self.event_start == self._tail_at

    def skip(self, size: int) -> None:
        """Account for `size` bytes of whole events that the caller read itself, at a boundary."""
        if not self.at_event_boundary:
            raise ValueError(
                f"cannot skip {size} bytes at stream offset {self._tail_at + len(self._tail)}: the "
                f"event that started at {self.event_start} is not finished"
            )
        self.event_start = self._tail_at = self._tail_at + size

    def _whole_event(self, chunk: bytes, event_type: bytes, data_at: int) -> SSEEvent:
        start = self.event_start
        self.event_start = self._tail_at = end = self._tail_at + len(chunk)
        return event_type, chunk[data_at:-2], start, end

    def close(self) -> list[SSEEvent]:
        """End of stream: a held final "\\r" ends its line; an unterminated event is dropped."""
        events: list[SSEEvent] = []
        tail = self._tail
        if tail.endswith(b"\r"):
            self._line(tail[:-1], self._tail_at, self._tail_at + len(tail), events)
        self._tail = b""
        self._tail_at += len(tail)
        self._data = None
        self._event_type = b""
        self._idle = True
        return events

    def _feed_lines(self, chunk: bytes) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        buffer = self._tail + chunk if self._tail else chunk
        at = self._tail_at
        size = len(buffer)
        # The tail holds no line ending except perhaps a final "\r": search from there.
        position = 0
        search_from = max(len(self._tail) - 1, 0)
        while (match := _LINE_END.search(buffer, search_from)) is not None:
            line_end, next_line = match.span()
            if next_line == size and next_line - line_end == 1 and buffer[line_end] == _CR:
                break  # a final lone "\r" may be the first half of "\r\n"
            self._line(buffer[position:line_end], at + position, at + next_line, events)
            position = search_from = next_line
        self._tail = buffer[position:]
        self._tail_at = at + position
        self._idle = not self._tail and self._data is None and not self._event_type
        return events

    def _line(self, line: bytes, line_at: int, next_line_at: int, events: list[SSEEvent]) -> None:
        if not line:
            if self._data is not None:
                events.append((self._event_type, b"\n".join(self._data), self.event_start, next_line_at))
            self._data = None
            self._event_type = b""
            self.event_start = next_line_at
            return
        if line_at == 0 and line.startswith(_BOM):
            line = line[3:]
            if not line:
                return
        if line[0] == _COLON:
            return
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            if self._data is None:
                self._data = [value]
            else:
                self._data.append(value)
        elif name == b"event":
            self._event_type = value


def _value_at(chunk: bytes, after_colon: int) -> int:
    """Where a field's value starts: after the colon and one optional space."""
    return after_colon + 1 if chunk[after_colon] == _SPACE else after_colon
