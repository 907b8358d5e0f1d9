"""The framing of the requests on one connection, followed ahead of the HTTP parser.

llhttp (aiohttp's C parser) is strict about most things a proxy must refuse, but a few of them it
lets through, and what it does let through is gone by the time a handler sees the parsed request:

- a request line with two spaces (`GET  / HTTP/1.1`: RFC 9112 §3 allows a server to parse on
  whitespace, but a proxy that normalises what another hop may split differently invites desync);
- an `HTTP/2.0` (or any non-1.x) version in an HTTP/1 request line (answered, until now, as
  `HTTP/2.0 200` in HTTP/1.1 framing): 505, as nginx answers;
- a chunk-size line of any length (a 100 KB chunk extension): refused past `max_chunk_line`,
  as HAProxy refuses a chunk-size line that does not fit its buffer;
- and its size limits all answer 400, where 414 (request line) and 431 (header fields) say what
  went wrong (RFC 9110 §15.5.15, RFC 6585 §5).

`RequestFraming.feed(data)` follows heads, Content-Length bodies and chunked bodies (with trailers)
and returns a `Refusal` for the first of these it finds. `feed(data, room)` stops once `room`
messages have ended in `data` (`consumed` says where): a server that bounds how many pipelined
requests it parses ahead holds the rest back exactly at a message boundary. It decides only what it is sure of: where
the framing is something llhttp itself will reject (CL with TE, an unparsable length) or hand to
another protocol (Upgrade, CONNECT), it stops following (`off`) and leaves the connection to llhttp.
Pure: bytes in, a verdict out; no aiohttp, so the same follower can guard another parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# token SP request-target SP HTTP-version (RFC 9112 §3): exactly one SP between the three.
_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ ([^\x00-\x20\x7f]+) HTTP/([0-9])\.[0-9]")
_HEX = frozenset(b"0123456789abcdefABCDEF")

_HEAD, _LENGTH, _CHUNK_LINE, _CHUNK_DATA, _TRAILERS, _OFF, _REFUSED = range(7)


@dataclass(frozen=True, slots=True)
class WireLimits:
    max_line: int = 8190  # request-target bytes (aiohttp's max_line_size)
    max_field: int = 8190  # name + value of one field line (aiohttp's max_field_size)
    max_headers: int = 128
    max_chunk_line: int = 4096  # chunk size and extensions


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    reason: str
    offset: int  # bytes of the data just fed that belong to earlier, acceptable messages
    in_body: bool  # the head was accepted (a handler may be reading this body)


class RequestFraming:
    """Follows one connection's requests; see the module docstring."""

    __slots__ = ("_limits", "_state", "_buf", "_remaining", "_start", "consumed")

    def __init__(self, limits: WireLimits = WireLimits()) -> None:
        self._limits = limits
        self._state = _HEAD
        self._buf = bytearray()  # a head, chunk-size line or trailer section split across reads
        self._remaining = 0  # body bytes still to skip (chunk data includes its CRLF)
        self._start = 0  # where the current head or chunk-size line began in this data
        self.consumed = 0  # how much of the data last fed was followed (all of it unless `room` ran out)

    @property
    def off(self) -> bool:
        return self._state >= _OFF

    @property
    def in_head(self) -> bool:
        """Part of a request head has arrived and the rest has not (the head deadline runs)."""
        return self._state == _HEAD and bool(self._buf)

    def feed(self, data: bytes, room: int = -1) -> Refusal | None:
        """Follow `data`; the refusal of the first thing in it that must be refused, if any.
        With `room` > 0, stop right after the `room`-th message that ends in `data`."""
        pos, end = 0, len(data)
        self._start = 0
        self.consumed = end
        while pos < end:
            state = self._state
            if state == _LENGTH or state == _CHUNK_DATA:
                take = min(self._remaining, end - pos)
                self._remaining -= take
                pos += take
                if not self._remaining:
                    self._state = _HEAD if state == _LENGTH else _CHUNK_LINE
                    self._start = pos
                    if state == _LENGTH:
                        room -= 1
                        if not room and pos < end:
                            self.consumed = pos
                            return None
                continue
            if state >= _OFF:
                return None
            found = self._line_or_section(data, pos, state)
            if found is None:
                return self._partial(state)
            block, pos = found
            refusal = self._complete(block, state)
            if refusal is not None:
                return self._refuse(refusal, state)
            self._start = pos
            if self._state == _HEAD and state != _CHUNK_LINE:  # a head without a body, or trailers
                room -= 1
                if not room and pos < end:
                    self.consumed = pos
                    return None
        return None

    def _line_or_section(self, data: bytes, pos: int, state: int) -> tuple[bytes, int] | None:
        """The whole head, chunk-size line or trailer section starting at `pos` (with what was
        kept from earlier reads) and where the data after it begins; None when incomplete."""
        buf = self._buf
        if state == _HEAD and not buf:
            while data.startswith(b"\r\n", pos):  # RFC 9112 §2.2: empty lines before a request
                pos += 2
            self._start = pos
        marker = b"\r\n" if state == _CHUNK_LINE else b"\r\n\r\n"
        if not buf:
            at = data.find(marker, pos)
            if at >= 0:
                return data[pos:at], at + len(marker)
            buf += data[pos:]
            return None
        if state == _HEAD and buf == b"\r" and data.startswith(b"\n", pos):
            # An empty line before the request, split between reads: skip it, start again.
            buf.clear()
            return self._line_or_section(data, pos + 1, state)
        kept = len(buf)
        buf += data[pos:]
        at = buf.find(marker, max(0, kept - len(marker) + 1))
        if at < 0:
            return None
        block = bytes(buf[:at])
        after = pos + at + len(marker) - kept
        buf.clear()
        return block, after

    def _partial(self, state: int) -> Refusal | None:
        """An incomplete block that is already over a limit."""
        buf, limits = self._buf, self._limits
        if state == _CHUNK_LINE:
            if len(buf) > limits.max_chunk_line:
                return self._refuse((400, "chunk-size line (with extensions) too long"), state)
            return None
        if state == _TRAILERS:
            if len(buf) > limits.max_field + 2:
                return self._refuse((431, "trailer fields too large"), state)
            return None
        if buf.find(b"\r\n") < 0:
            if len(buf) > limits.max_line + 32:  # room for the method and version
                return self._refuse((414, "request line too long"), state)
            return None
        if buf.count(b"\r\n") > limits.max_headers + 1:
            return self._refuse((431, "too many header fields"), state)
        if len(buf) - buf.rfind(b"\r\n") - 2 > limits.max_field + 2:
            return self._refuse((431, "a header field is too large"), state)
        return None

    def _refuse(self, verdict: tuple[int, str], state: int) -> Refusal:
        self._state = _REFUSED
        self._buf.clear()
        return Refusal(verdict[0], verdict[1], self._start, state != _HEAD)

    def _complete(self, block: bytes, state: int) -> tuple[int, str] | None:
        if state == _HEAD:
            return self._head(block)
        if state == _CHUNK_LINE:
            return self._chunk_line(block)
        # _TRAILERS: the block is the trailer section (after the leading CRLF kept for it)
        if len(block) > self._limits.max_field + 2:
            return 431, "trailer fields too large"
        self._state = _HEAD
        return None

    def _head(self, head: bytes) -> tuple[int, str] | None:
        # Written for the usual head (a few hundred bytes): whole-head C-level scans, no loop over
        # its lines unless it is long enough for one of them to be over a limit.
        limits = self._limits
        line_end = head.find(b"\r\n")
        match = _REQUEST_LINE.fullmatch(head if line_end < 0 else head[:line_end])
        if match is None:
            if (len(head) if line_end < 0 else line_end) > limits.max_line + 32:
                return 414, "request line too long"
            return 400, "malformed request line"
        if len(match.group(1)) > limits.max_line:
            return 414, "request line too long"
        if match.group(2) != b"1":
            return 505, "only HTTP/1.0 and HTTP/1.1 are served here"
        if line_end < 0:
            self._state = _HEAD
            return None
        if head.count(b"\r\n") > limits.max_headers:
            return 431, "too many header fields"
        if len(head) - line_end > limits.max_field and self._long_field(head[line_end + 2:]):
            return 431, "a header field is too large"
        return self._framing(head[line_end:].lower(), head.startswith(b"CONNECT "))

    def _long_field(self, fields: bytes) -> bool:
        limit = self._limits.max_field
        for line in fields.split(b"\r\n"):
            if len(line) > limit:
                name, _, value = line.partition(b":")
                if len(name) + len(value.strip(b" \t")) > limit:
                    return True
        return False

    def _framing(self, fields: bytes, connect: bool) -> None:
        """Where the body ends, from the lower-cased field lines (each after a CRLF)."""
        chunked = fields.find(b"\r\ntransfer-encoding:") >= 0
        at = fields.find(b"\r\ncontent-length:")
        length: int | None = None
        if at >= 0:
            value_end = fields.find(b"\r\n", at + 17)
            value = fields[at + 17: value_end if value_end >= 0 else len(fields)].strip(b" \t")
            if not value.isdigit() or fields.find(b"\r\ncontent-length:", at + 17) >= 0:
                self._state = _OFF  # unparsable or repeated: llhttp refuses it
                return None
            length = int(value)
        if connect or (chunked and length is not None) or fields.find(b"\r\nupgrade:") >= 0:
            # Another protocol may follow, or llhttp refuses the framing (CL with TE).
            self._state = _OFF
        elif chunked:
            # llhttp refuses any request TE whose last coding is not chunked.
            self._state = _CHUNK_LINE
        elif length:
            self._state, self._remaining = _LENGTH, length
        else:
            self._state = _HEAD
        return None

    def _chunk_line(self, line: bytes) -> tuple[int, str] | None:
        if len(line) > self._limits.max_chunk_line:
            return 400, "chunk-size line (with extensions) too long"
        size = line.split(b";", 1)[0]
        if not size or len(size) > 16 or not _HEX.issuperset(size):
            self._state = _OFF  # llhttp refuses it
            return None
        remaining = int(size, 16)
        if remaining:
            self._state, self._remaining = _CHUNK_DATA, remaining + 2  # the data and its CRLF
        else:
            # The last chunk: the trailer section follows, ended by an empty line. Keep the CRLF
            # that ended this line, so that "\r\n\r\n" also ends an empty trailer section.
            self._state = _TRAILERS
            self._buf += b"\r\n"
        return None
