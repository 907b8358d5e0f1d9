"""The inspector of server-sent event streams (`text/event-stream`).

Every chunk is forwarded as it came, the same object, the moment it arrives, except in one mode:
when the proxy itself asked the upstream for usage (`RequestFacts.usage_injected`), the final
usage-only chunk must not reach the client. Then only complete events are forwarded, at once, and
the bytes of an incomplete trailing event are held until its blank line arrives; the usage event is
cut out. The other chunks of such a stream carry `"usage":null`, which is left in: it is part of
the documented chunk schema (clients that ask for usage get it too), and removing it would copy
every chunk.

A stream that ends without its protocol's proper end (`[DONE]` or a finish reason, a terminal
responses event, `message_stop`) or that reports an error in the stream ended early
(`Inspection.ended_early`); that, or a body the transport cut short, makes the response truncated:
a failure of the version that served it.

Anything the inspector cannot parse turns it into a pass-through for the rest of the response,
with `inspect_error` set; bytes are never held or dropped after that.

Cost: `feed` runs for every chunk of every stream, so the common chunks take short cuts that read
exactly what the full path would. Between chunks the inspector knows whether the stream stands at
an event boundary; there a chunk that is one delta event of the learned shape is checked inline
(`DeltaTemplate.quick`, no call), `data: [DONE]` is recognised by comparison, and whole delta
events of other shapes are read on the wire (`DeltaTemplate.read_events`). Only what is left goes
through the SSE decoder and, when the template does not fit, `json` and the protocol reader. The
full path runs in `feed` too, never later, so the time to first token is taken when its chunk
arrives and nothing is buffered beyond the held-back event of the usage-removal mode. (Keeping the
chunks to read them in bulk at the end does not pay: every scan of the whole buffer, by `re`,
`bytes.split` or `count`, costs more than these checks, which compare the learned bytes with
memcmp and scan only the few bytes of the string.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from canaryproxy.inspection import jsonbytes
from canaryproxy.inspection.fastpath import BODY_END, DeltaTemplate, Quick
from canaryproxy.inspection.findings import Findings, record
from canaryproxy.inspection.request import RequestFacts
from canaryproxy.inspection.settings import InspectionSettings
from canaryproxy.inspection.sse import SSEDecoder, SSEEvent

EventReader = Callable[[dict[str, Any], Findings], None]

_DONE = b"[DONE]"
_DONE_EVENT = b"data: [DONE]\n\n"
_find_body_end = BODY_END.search  # bound once: the hot path looks it up per chunk


class StreamInspector:
    __slots__ = (
        "_read_event",
        "_drop_event",
        "_found",
        "_facts",
        "_settings",
        "_decoder",
        "_template",
        "_at_boundary",
        "_quick",
        "_passthrough",
        "_held",
        "_held_at",
    )

    def __init__(
        self,
        read_event: EventReader,
        found: Findings,
        facts: RequestFacts,
        settings: InspectionSettings,
        drop_event: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        self._read_event = read_event
        # Set only when the proxy injected a request for usage: which events to keep from the client.
        self._drop_event = drop_event
        self._found = found
        self._facts = facts
        self._settings = settings
        self._decoder = SSEDecoder()
        self._template: DeltaTemplate | None = None
        self._at_boundary = True  # every byte fed so far belongs to a finished event
        self._quick: Quick | None = None  # the template's quick form, while at a boundary
        self._passthrough = False
        # Stream offsets (the decoder's, `_held_at`) count only the chunks that reach the decoder:
        # a chunk read whole by a short cut is forwarded whole and holds no part of an event, so
        # leaving it out shifts every offset alike and costs the hot path nothing.
        self._held = b""  # bytes not yet forwarded (only when dropping events)
        self._held_at = 0  # stream offset of _held[0]

    def feed(self, chunk: bytes) -> bytes:
        try:
            quick = self._quick
            if quick is not None:
                head, tail, body_start, tail_size = quick
                if not chunk.startswith(head):
                    return self._feed_events(chunk, None)  # no delta of the learned shape at its start
                body_end = len(chunk) - tail_size
                if (
                    body_start <= body_end
                    and chunk.endswith(tail)
                    and _find_body_end(chunk, body_start, body_end) is None
                    and chunk.isascii()
                ):
                    # The hot path: one delta event of the learned shape, its string plain ASCII.
                    found = self._found
                    found.output_chars += body_end - body_start
                    found.deltas += 1
                    return chunk
            if self._passthrough:
                return chunk
            return self._feed_events(chunk, self._template)
        except Exception:  # noqa: BLE001 - a response must never break on what we failed to read
            return self._give_up(chunk)

    def finish(self, complete: bool) -> bytes:
        rest = b""
        found = self._found
        if not self._passthrough:
            try:
                drops = self._read(self._decoder.close())
                if self._drop_event is not None:
                    rest = self._forward(b"", drops, final=True)
            except Exception:  # noqa: BLE001
                rest = self._give_up(b"")
        if self._passthrough:
            return rest  # nothing read since giving up: the protocol's verdict is unknown
        inspection = found.inspection
        inspection.ended_early = ended_early = not found.ended or found.broken
        try:
            record(found, self._facts, self._settings, checks=complete and not ended_early)
        except Exception:  # noqa: BLE001
            inspection.inspect_error = True
        return rest

    def _feed_events(self, chunk: bytes, template: DeltaTemplate | None) -> bytes:
        """`feed` past the quick check: the short cuts at a boundary (reading `template` on the
        wire, unless None), then the decoder for what they leave."""
        read = 0
        if self._at_boundary:
            if chunk == _DONE_EVENT:  # one event, "[DONE]": the decoder would say just that
                self._found.ended = True
                return chunk
            if template is not None:
                read = template.read_events(chunk, self._found)
                if read == len(chunk):
                    return chunk  # whole delta events: nothing to hold or drop
        decoder = self._decoder
        if read:
            decoder.skip(read)  # `_forward` cuts this chunk, from `_held_at`, at the decoder's offsets
        events = decoder.feed(chunk[read:] if read else chunk)
        drops = self._read(events)
        self._at_boundary = at_boundary = decoder.at_event_boundary
        learned = self._template
        self._quick = learned.quick if at_boundary and learned is not None else None
        if self._drop_event is None:
            return chunk
        if not drops and not self._held and decoder.event_start == self._held_at + len(chunk):
            self._held_at += len(chunk)
            return chunk  # whole events, none dropped: the common case in this mode too
        return self._forward(chunk, drops)

    def _read(self, events: list[SSEEvent]) -> list[tuple[int, int]]:
        """Read the events; the spans of those to drop."""
        drops: list[tuple[int, int]] = []
        found = self._found
        for event_type, data, start, end in events:
            template = self._template
            if template is not None and template.apply(data, found):
                continue  # a delta event, read without parsing
            if self._read_fully(event_type, data):
                drops.append((start, end))
        return drops

    def _read_fully(self, event_type: bytes, data: bytes) -> bool:
        """Parse and read one event; whether to drop it."""
        found = self._found
        if data == _DONE:
            found.ended = True
            return False
        event = jsonbytes.loads(data)
        if not isinstance(event, dict):
            raise ValueError("an event's data is not a JSON object")
        found.appends = 0
        self._read_event(event, found)
        if found.appends == 1 and found.last_append is not None:
            # The event did nothing but append one string: later events like it take the fast path.
            marker, value, sink = found.last_append
            self._template = DeltaTemplate.learn(data, marker, value, sink, event_type) or self._template
        return self._drop_event is not None and self._drop_event(event)

    def _forward(self, chunk: bytes, drops: list[tuple[int, int]], final: bool = False) -> bytes:
        """The bytes to send now: whole events only (everything at the end), less the dropped ones."""
        held_at = self._held_at
        pending = self._held + chunk if self._held else chunk
        until = held_at + len(pending) if final else self._decoder.event_start
        out: list[bytes] = []
        position = held_at
        for start, end in drops:
            out.append(pending[position - held_at : start - held_at])
            position = end
        out.append(pending[position - held_at : until - held_at])
        self._held = pending[until - held_at :]
        self._held_at = until
        return b"".join(out)

    def _give_up(self, chunk: bytes) -> bytes:
        """Stop reading: forward everything held and all that comes, as it comes."""
        self._passthrough = True
        self._quick = None
        self._found.inspection.inspect_error = True
        rest = self._held + chunk if self._held else chunk
        self._held = b""
        return rest
