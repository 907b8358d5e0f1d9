"""Which response is which: the request id every response carries, and the hook through which the
feedback endpoint signs the attribution of each one (canaryproxy/feedback/endpoint.py)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Protocol, TypeGuard

from multidict import CIMultiDict

from canaryproxy.core.types import Outcome
from canaryproxy.proxy.http import Request, StreamResponse

_random_bits = random.Random().getrandbits


def new_request_id() -> str:
    # Unique, not secret: a Mersenne Twister draw costs no system call (os.urandom does).
    return f"{_random_bits(128):032x}"


def acceptable_request_id(value: str | None) -> TypeGuard[str]:
    """A client's (or an upstream's) X-Request-Id we take as it is. It is echoed into logs, upstream
    headers and feedback tokens: short, printable ASCII, no spaces."""
    return (
        value is not None and 0 < len(value) <= 128 and value.isascii() and value.isprintable()
        and " " not in value
    )


class FeedbackHook(Protocol):
    """The feedback endpoint as the forwarder sees it."""

    path: str

    def stamp(self, outcome: Outcome, headers: CIMultiDict[str], request_headers: Mapping[str, str]) -> None:
        """Add the attribution token (and CORS exposure, by the request's Origin) to a proxied
        response's headers."""
        ...

    async def handle(self, request: Request, request_id: str) -> StreamResponse:
        """Answer a request to `path` (never forwarded)."""
        ...
