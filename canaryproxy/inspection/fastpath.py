"""The exact shortcut for stream events that only append a string.

A token stream is mostly events that differ from the previous one only in the delta string:

    data: {"id":"chatcmpl-1","object":"chat.completion.chunk",...,"delta":{"content":" word"},...}

After the full reader has handled such an event and seen that it did nothing but append one
string, `DeltaTemplate.learn` keeps the event's bytes before and after that string. A later event
whose bytes are the same around a valid JSON string parses to the same object except that string,
so reading it would have the same effects (all of them idempotent: model, guardrails, usage) plus
appending the new string. The template checks exactly that with bytes operations and appends, or
declines and the event takes the full path. Escapes are decoded only when a backslash is present.

The template checks events in two forms:

* `apply` takes the data of one event the SSE decoder has cut out;
* `read_events` takes a chunk as it came off the wire, starting at an event boundary, and reads the
  whole events at its start that are exactly `data: <template>` (after an `event: <type>` line if
  the learned event had a type) and a blank line: bytes the decoder would cut into the same events,
  with the same data. For a chunk that is one such event with a plain ASCII string (most chunks)
  there are cheaper checks of the same: `quick`, which the stream inspector makes inline, and one
  for OpenAI's events, which end in a padding string.

A stream may renumber or pad each event: `"sequence_number":N` (responses API) and
`"obfuscation":"..."` (OpenAI) are allowed to differ, one of them before and one after the string.
Nothing reads them.
"""

from __future__ import annotations

import re
from json.decoder import scanstring

from canaryproxy.inspection.findings import Findings, TextSink

# The first byte that ends the plain body of a JSON string: a quote, a backslash or a control byte.
BODY_END = re.compile(rb'["\\\x00-\x1f]')
_find_body_end = BODY_END.search  # bound once: the hot path looks it up per event
_VOLATILE_NAMES = (b'"sequence_number":', b'"obfuscation":')
_VOLATILE_MEMBER = re.compile(rb'"(sequence_number|obfuscation)":')
# A JSON string of ASCII without escapes: what no byte BODY_END finds, and no byte over 0x7f.
_PLAIN_ASCII_STRING = re.compile(rb'"[\x20\x21\x23-\x5b\x5d-\x7f]*"')
_HOLES = {b"sequence_number": re.compile(rb"0|[1-9][0-9]*"), b"obfuscation": _PLAIN_ASCII_STRING}
_QUOTE = 34
_EVENT_END = b"\n\n"

# Bytes before (or after) the string: a literal, or a literal, a volatile value and a literal.
_Part = tuple[bytes, "re.Pattern[bytes] | None", bytes]

# `DeltaTemplate.quick`: (head, tail, len(head), len(tail)) of the event on the wire, when both are
# plain literals and nothing keeps the text. Then a chunk `head + body + tail` whose body is ASCII
# and holds no byte BODY_END finds is exactly one event, read as len(body) characters: a check
# cheap enough to make inline on every chunk. The lengths are there to spare len() calls.
Quick = tuple[bytes, bytes, int, int]
# OpenAI's events end in a padding string: (head, tail up to the padding's value, len(head), end).
# A chunk `head + body + tail + padding + end`, body and padding ASCII holding no byte BODY_END
# finds, is one event whose padding `_PLAIN_ASCII_STRING` takes.
_Padded = tuple[bytes, bytes, int, bytes]


class _Frame:
    """The bytes around the string in one form: the event's data, or the event on the wire."""

    __slots__ = ("head", "head_hole", "head_rest", "tail", "tail_hole", "tail_rest")

    def __init__(self, head: _Part, tail: _Part) -> None:
        self.head, self.head_hole, self.head_rest = head
        self.tail, self.tail_hole, self.tail_rest = tail

    def match(self, buffer: bytes, position: int) -> tuple[int, int, str | None, int] | None:
        """The string after the head at `position`, when a valid JSON string is there and the tail
        follows it at once: (string start, string end, its value if it had escapes, tail end)."""
        head = self.head
        if not buffer.startswith(head, position):
            return None
        start = position + len(head)
        if self.head_hole is not None:
            value = self.head_hole.match(buffer, start)
            if value is None or not buffer.startswith(self.head_rest, value.end()):
                return None
            start = value.end() + len(self.head_rest)
        body_end = BODY_END.search(buffer, start)
        if body_end is None:
            return None
        end = body_end.start()
        text: str | None = None
        if buffer[end] != _QUOTE:  # a backslash (or a control byte, which the scanner refuses)
            string = _scan_string(buffer, start)
            if string is None:
                return None
            text, end = string
        tail = self.tail
        if not buffer.startswith(tail, end):
            return None
        after = end + len(tail)
        if self.tail_hole is not None:
            value = self.tail_hole.match(buffer, after)
            if value is None or not buffer.startswith(self.tail_rest, value.end()):
                return None
            after = value.end() + len(self.tail_rest)
        return start, end, text, after


class DeltaTemplate:
    __slots__ = ("_data", "_wire", "_sink", "_padded", "quick")

    def __init__(self, data: _Frame, wire: _Frame | None, sink: TextSink | None) -> None:
        self._data = data
        self._wire = wire
        self._sink = sink
        self.quick: Quick | None = None
        self._padded: _Padded | None = None
        if wire is not None and wire.head_hole is None and sink is None:
            if wire.tail_hole is None:
                self.quick = wire.head, wire.tail, len(wire.head), len(wire.tail)
            elif wire.tail_hole is _PLAIN_ASCII_STRING:
                self._padded = wire.head, wire.tail + b'"', len(wire.head), b'"' + wire.tail_rest

    @classmethod
    def learn(
        cls, data: bytes, marker: bytes, value: str, sink: TextSink | None, event_type: bytes = b""
    ) -> DeltaTemplate | None:
        """A template from an event whose only effect was appending `value` to `sink`.

        `marker` is the start of the JSON member that carried it (`"content":"`), `event_type` the
        event's `event:` field. None when the string cannot be located without doubt: the marker is
        missing (the server writes spaces after colons) or occurs twice, or the string there is not
        `value`. Data of more than one line has no wire form.
        """
        at = data.find(marker)
        if at < 0 or data.find(marker, at + 1) >= 0:
            return None
        start = at + len(marker)
        string = _read_string(data, start)
        if string is None or string[0] != value:
            return None
        end = string[1]
        if _VOLATILE_NAMES[0] in data or _VOLATILE_NAMES[1] in data:
            head = _split_volatile(data[:start])
            tail = _split_volatile(data[end:])
            if head is None or tail is None:
                return None
        else:  # most streams: nothing volatile, no regular expression to run
            head, tail = (data[:start], None, b""), (data[end:], None, b"")
        wire = None
        if b"\n" not in data and b"\r" not in data:
            prefix = b"event: " + event_type + b"\ndata: " if event_type else b"data: "
            wire = _Frame((prefix + head[0], head[1], head[2]), _with_event_end(tail))
        return cls(_Frame(head, tail), wire, sink)

    def apply(self, data: bytes, found: Findings) -> bool:
        """Append the event's string if the event fits the template; False (and no change) if not."""
        fit = self._data.match(data, 0)
        if fit is None or fit[3] != len(data):
            return False
        start, end, text, _after = fit
        if text is None:
            if self._sink is None and data.isascii():
                found.output_chars += end - start  # the common case: nothing to decode
                found.deltas += 1
                return True
            try:
                text = data[start:end].decode("utf-8", "surrogatepass")
            except UnicodeDecodeError:
                return False  # not JSON: the full reader will say so
        self._append(text, found)
        return True

    def read_events(self, chunk: bytes, found: Findings) -> int:
        """Read the whole events at the start of `chunk` (which starts at an event boundary) that
        fit the template on the wire; the number of bytes they take, 0 if none."""
        padded = self._padded
        if padded is not None and _read_padded_event(padded, chunk, found):
            return len(chunk)
        wire = self._wire
        if wire is None:
            return 0
        count_only = self._sink is None and chunk.isascii()
        size = len(chunk)
        position = 0
        quick = self.quick
        if quick is not None and count_only:
            position = _count_plain_events(quick, chunk, found)  # the plain events at its start
            if position == size:
                return position
        while position < size and (fit := wire.match(chunk, position)) is not None:
            start, end, text, after = fit
            if text is None:
                if count_only:
                    found.output_chars += end - start
                    found.deltas += 1
                    position = after
                    continue
                try:
                    text = chunk[start:end].decode("utf-8", "surrogatepass")
                except UnicodeDecodeError:
                    break  # not JSON: the full reader will say so
            self._append(text, found)
            position = after
        return position

    def _append(self, text: str, found: Findings) -> None:
        found.output_chars += len(text)
        found.deltas += 1
        if self._sink is not None:
            self._sink.add(text)


def _count_plain_events(quick: Quick, chunk: bytes, found: Findings) -> int:
    """`read_events` for the `quick` shape and an ASCII chunk: the events at its start that are
    `head + body + tail`, the body holding no byte BODY_END finds; the bytes they take (the
    frame-by-frame loop goes on from there: an escape, another shape).

    Under load a read brings several events at once: one split at the tails and two checks per
    piece cost a third of matching the frame event by event. The split is exact: a tail starts
    with the quote that closes the string, which no body holds, so every tail found ends an
    event or lies inside a head (and that piece does not start with the head: declined).
    """
    head, tail, body_start, tail_size = quick
    position = 0
    pieces = chunk.split(tail)
    pieces.pop()  # after the last tail: not a whole event of this shape
    for piece in pieces:
        if not piece.startswith(head) or _find_body_end(piece, body_start) is not None:
            break
        found.output_chars += len(piece) - body_start
        found.deltas += 1
        position += len(piece) + tail_size
    return position


def _read_padded_event(padded: _Padded, chunk: bytes, found: Findings) -> bool:
    """Whether `chunk` is one event of the padded shape with a plain ASCII string; if so, read.

    The `quick` check for that shape: two plain strings to find, no match to build.
    """
    head, tail, body_start, end = padded
    if not chunk.startswith(head):
        return False
    body_end = BODY_END.search(chunk, body_start)
    if body_end is None:
        return False
    padding_start = body_end.start() + len(tail)
    padding_end = len(chunk) - len(end)
    if (
        chunk.startswith(tail, body_end.start())
        and padding_start <= padding_end
        and chunk.endswith(end)
        and BODY_END.search(chunk, padding_start, padding_end) is None
        and chunk.isascii()
    ):
        found.output_chars += body_end.start() - body_start
        found.deltas += 1
        return True
    return False


def _read_string(data: bytes, start: int) -> tuple[str, int] | None:
    """The JSON string whose body starts at `start`: its value and the offset of its closing quote.

    None when no valid JSON string starts there.
    """
    body_end = BODY_END.search(data, start)
    if body_end is None or data[body_end.start()] != _QUOTE:
        return _scan_string(data, start)
    try:  # no escapes: the bytes are the string
        return data[start : body_end.start()].decode("utf-8", "surrogatepass"), body_end.start()
    except UnicodeDecodeError:
        return None


def _scan_string(data: bytes, start: int) -> tuple[str, int] | None:
    """`_read_string` by the JSON scanner, for a string with escapes.

    Only the rest of the line is decoded: a JSON string holds no raw line break. Decoding uses
    "surrogatepass", as json.loads does for bytes, so both paths accept (or refuse) the same input.
    """
    stop = data.find(b"\n", start)
    try:
        rest = data[start : stop if stop >= 0 else len(data)].decode("utf-8", "surrogatepass")
        text, after = scanstring(rest, 0)
    except ValueError:  # not UTF-8, or not a valid JSON string
        return None
    if rest.isascii():  # a flag on the str: no need to encode to count bytes
        return text, start + after - 1
    return text, start + len(rest[: after - 1].encode("utf-8", "surrogatepass"))


def _split_volatile(part: bytes) -> _Part | None:
    """`part` around its one volatile member value, None if it has more than one."""
    members = list(_VOLATILE_MEMBER.finditer(part))
    if not members:
        return part, None, b""
    if len(members) > 1:
        return None
    member = members[0]
    hole = _HOLES[member.group(1)]
    value = hole.match(part, member.end())
    if value is None:
        return None
    return part[: member.end()], hole, part[value.end() :]


def _with_event_end(tail: _Part) -> _Part:
    """The tail on the wire: its line ends, then a blank line ends the event."""
    literal, hole, rest = tail
    if hole is None:
        return literal + _EVENT_END, None, b""
    return literal, hole, rest + _EVENT_END
