"""What both upstream clients share: the deadlines, the retry rule, and the words of every failure.

The failure messages are built here once, so the client on llhttp and the one on aiohttp say the
same thing to the operator for the same event.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDict

from canaryproxy.core.types import ErrorKind
from canaryproxy.errors import UpstreamError

# What can be sent: nothing, a buffered body (may be sent twice), or a stream (sent at most once).
Body = bytes | AsyncIterable[bytes] | None

# Why a request was sent a second time: the labels of canaryproxy_upstream_retries_total.
RETRY_CONNECT_REFUSED = "connect_refused"
RETRY_STALE_CONNECTION = "stale_connection"
RETRY_REASONS = (RETRY_CONNECT_REFUSED, RETRY_STALE_CONNECTION)

# Methods whose requests can be replayed after a stale connection, as Go's `isReplayable` has them
# (safe methods; PUT and DELETE are idempotent but not safe, and Go leaves them out too), and the
# headers that make any request replayable (draft-ietf-httpapi-idempotency-key-header).
_REPLAYABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_IDEMPOTENCY_KEYS = ("Idempotency-Key", "X-Idempotency-Key")


@dataclass(frozen=True, slots=True)
class Deadlines:
    connect: float = 5.0  # a connection, or a slot in the pool
    first_byte: float = 300.0  # the response head and the first body chunk
    idle: float = 60.0  # any gap between body chunks after the first


def replayable(method: str, headers: CIMultiDict[str], body: Body) -> bool:
    """May this request be sent again after a stale connection lost it? (Go's `isReplayable`.)"""
    if not (body is None or isinstance(body, bytes)):
        return False  # a streamed body has been consumed
    return method in _REPLAYABLE_METHODS or any(key in headers for key in _IDEMPOTENCY_KEYS)


class ChunkIteration:
    """`async for chunk in response`, for a response whose `read()` gives chunks and b"" at the end.
    (`async for` costs a StopAsyncIteration per response: the relay calls read() instead.)"""

    __slots__ = ()

    async def read(self) -> bytes:
        raise NotImplementedError

    def __aiter__(self) -> Any:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read()
        if not chunk:
            raise StopAsyncIteration
        return chunk


def short(exc: BaseException | str) -> str:
    text = exc if isinstance(exc, str) else (str(exc) or type(exc).__name__)
    return text if len(text) <= 200 else text[:197] + "..."


class Failures:
    """The UpstreamErrors of one upstream, in the operator's words (`where` names it)."""

    __slots__ = ("where", "deadlines")

    def __init__(self, where: str, deadlines: Deadlines) -> None:
        self.where = where  # "canary upstream http://host:port"
        self.deadlines = deadlines

    def connect_timeout(self) -> UpstreamError:
        return UpstreamError(
            ErrorKind.CONNECT_TIMEOUT,
            f"{self.where} did not accept a connection within {self.deadlines.connect:g}s",
        )

    def refused(self, os_error: object) -> UpstreamError:
        return UpstreamError(ErrorKind.CONNECT, f"{self.where} refused or could not be reached: {os_error}")

    def no_head_in_time(self) -> UpstreamError:
        return UpstreamError(
            ErrorKind.FIRST_BYTE_TIMEOUT,
            f"{self.where} sent no response within {self.deadlines.first_byte:g}s",
        )

    def no_response(self) -> UpstreamError:
        return UpstreamError(ErrorKind.RESET, f"{self.where} closed the connection without a response")

    def bad_head(self, detail: BaseException | str) -> UpstreamError:
        return UpstreamError(ErrorKind.BAD_RESPONSE, f"{self.where} sent an invalid response: {short(detail)}")

    def no_body_in_time(self) -> UpstreamError:
        return UpstreamError(
            ErrorKind.FIRST_BYTE_TIMEOUT,
            f"{self.where} sent no body within {self.deadlines.first_byte:g}s",
        )

    def idle(self) -> UpstreamError:
        return UpstreamError(
            ErrorKind.IDLE_TIMEOUT,
            f"{self.where} sent nothing for {self.deadlines.idle:g}s in the middle of the body",
        )

    def broke_off(self, detail: BaseException | str) -> UpstreamError:
        return UpstreamError(ErrorKind.RESET, f"{self.where} broke off the response body: {short(detail)}")
