"""The exact shortcut for stream events that only append a string.

A token stream is mostly events that differ from the previous one only in the delta string:

    {"id":"chatcmpl-1","object":"chat.completion.chunk",...,"delta":{"content":" word"},...}

After the full reader has handled such an event and seen that it did nothing but append one
string, `DeltaTemplate.learn` keeps the event's bytes before and after that string. A later event
whose bytes are the same around a valid JSON string parses to the same object except that string,
so reading it would have the same effects (all of them idempotent: model, guardrails, usage) plus
appending the new string. `apply` checks exactly that with bytes operations and appends, or
declines and the event takes the full path. Escapes are decoded only when a backslash is present.

A stream may renumber or pad each event: `"sequence_number":N` (responses API) and
`"obfuscation":"..."` (OpenAI) are allowed to differ, one of them before and one after the string.
Nothing reads them.
"""

from __future__ import annotations

import re
from json.decoder import scanstring

from canaryproxy.inspect.findings import Findings, TextSink

# The body of a JSON string up to its first quote, backslash or control character.
_PLAIN_BODY = re.compile(rb'[^"\\\x00-\x1f]*')
_VOLATILE_MEMBER = re.compile(rb'"(sequence_number|obfuscation)":')
_HOLES = {
    b"sequence_number": re.compile(rb"0|[1-9][0-9]*"),
    b"obfuscation": re.compile(rb'"[\x20\x21\x23-\x5b\x5d-\x7e]*"'),  # printable ASCII, no escapes
}
_QUOTE = b'"'

# Bytes before (or after) the string: a literal, or a literal, a volatile value and a literal.
_Part = tuple[bytes, "re.Pattern[bytes] | None", bytes]


class DeltaTemplate:
    __slots__ = ("_head", "_head_hole", "_head_rest", "_tail", "_tail_hole", "_tail_rest", "_sink")

    def __init__(self, head: _Part, tail: _Part, sink: TextSink | None) -> None:
        self._head, self._head_hole, self._head_rest = head
        self._tail, self._tail_hole, self._tail_rest = tail
        self._sink = sink

    @classmethod
    def learn(cls, data: bytes, marker: bytes, value: str, sink: TextSink | None) -> DeltaTemplate | None:
        """A template from an event whose only effect was appending `value` to `sink`.

        `marker` is the start of the JSON member that carried it (`"content":"`). None when the
        string cannot be located without doubt: the marker is missing (the server writes spaces
        after colons) or occurs twice, or the string there is not `value`.
        """
        at = data.find(marker)
        if at < 0 or data.find(marker, at + 1) >= 0:
            return None
        start = at + len(marker)
        string = _read_string(data, start)
        if string is None or string[0] != value:
            return None
        end = string[1]
        head = _split_volatile(data[:start])
        tail = _split_volatile(data[end:])
        if head is None or tail is None:
            return None
        return cls(head, tail, sink)

    def apply(self, data: bytes, found: Findings) -> bool:
        """Append the event's string if the event fits the template; False (and no change) if not."""
        head = self._head
        if not data.startswith(head):
            return False
        start = len(head)
        if self._head_hole is not None:
            hole = self._head_hole.match(data, start)
            if hole is None or not data.startswith(self._head_rest, hole.end()):
                return False
            start = hole.end() + len(self._head_rest)
        end = _PLAIN_BODY.match(data, start).end()  # type: ignore[union-attr]
        text: str | None = None
        if data[end : end + 1] != _QUOTE:  # stopped at a backslash (or a control character)
            string = _read_string(data, start)
            if string is None:
                return False
            text, end = string
        tail = self._tail
        if self._tail_hole is None:
            if len(data) - end != len(tail) or not data.endswith(tail):
                return False
        elif not self._tail_with_hole_fits(data, end):
            return False
        sink = self._sink
        if text is None and sink is None and data.isascii():
            found.output_chars += end - start  # the common case: nothing to decode
            return True
        if text is None:
            text = data[start:end].decode("utf-8", "surrogatepass")
        found.output_chars += len(text)
        if sink is not None:
            sink.add(text)
        return True

    def _tail_with_hole_fits(self, data: bytes, end: int) -> bool:
        if not data.startswith(self._tail, end):
            return False
        hole = self._tail_hole.match(data, end + len(self._tail))  # type: ignore[union-attr]
        rest = self._tail_rest
        return hole is not None and len(data) - hole.end() == len(rest) and data.endswith(rest)


def _read_string(data: bytes, start: int) -> tuple[str, int] | None:
    """The JSON string whose body starts at `start`: its value and the offset of its closing quote.

    None when no valid JSON string starts there. Decoding uses "surrogatepass", as json.loads
    does for bytes, so both paths accept (or refuse) the same input.
    """
    try:
        rest = data[start:].decode("utf-8", "surrogatepass")
        text, after = scanstring(rest, 0)
    except ValueError:  # not UTF-8, or not a valid JSON string
        return None
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
