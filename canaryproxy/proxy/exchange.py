"""Sending one request to one upstream and reading its answer: pool, retry, deadlines, failures.

An `Exchange` is one upstream (a base URL) with its own keep-alive pool. It takes a method, an
origin-form target (`/path?query`, as received), headers and a body, and nothing from the client's
connection, so the same request can be sent to a second upstream through a second exchange.

* No total timeout: a stream lasts minutes. A connect timeout (waiting for a pool slot counts
  against it), a first-byte deadline (prefill can be slow), then an idle deadline between body
  chunks from the first byte on.
* Pooled connections are dropped after `keepalive` idle seconds, which must stay below the
  upstream's own idle timeout (uvicorn, and so vLLM, closes after 5 s): a request sent on a
  connection the upstream is closing at that moment is lost.
* At most one retry, on the same upstream, and only of a request whose body is buffered (or
  absent), when sending it again does no harm:
  - refused at connect: no byte reached the upstream;
  - a pooled connection (it had carried a response) closed before any byte of this response, and
    the method is safe (GET, HEAD, OPTIONS, TRACE) or the request carries an `Idempotency-Key`:
    what Go's transport retries (`shouldRetryRequest`, `isReplayable`). On the wire a stale
    connection looks exactly like an upstream that read the request and then hung up, so it may
    have started on it: nothing else is sent again (RFC 9110 §9.2.2: "A proxy MUST NOT
    automatically retry non-idempotent requests"), nor a request that failed on a fresh
    connection (the upstream hung up on that request, not on an idle connection), nor one that
    got part of a response.
* Every failure is one `UpstreamError` whose `kind` says what happened; exceptions that are not the
  upstream's (a request body that failed on the client's side) pass through unchanged.

The body is read with `UpstreamResponse.read()` (or `async for`), which raises `UpstreamError` too.

Two clients carry this out: the data plane's own on llhttp (canaryproxy/proxy/upstream/), for
plain-http upstreams, and aiohttp's (exchange_aiohttp.py) for https ones. CANARYPROXY_UPSTREAM=aiohttp
puts every upstream on aiohttp's, read when an Exchange is made: a switch for comparing the two
while the new client is young, to be removed with it.
"""

from __future__ import annotations

import os
from typing import Any

from canaryproxy.core.types import Role
from canaryproxy.proxy.exchange_aiohttp import AiohttpExchange, AiohttpResponse
from canaryproxy.proxy.upstream.client import Exchange as LlhttpExchange
from canaryproxy.proxy.upstream.policy import (
    RETRY_CONNECT_REFUSED, RETRY_REASONS, RETRY_STALE_CONNECTION, Body, Deadlines, replayable,
)
from canaryproxy.proxy.upstream.response import UpstreamResponse

__all__ = [
    "RETRY_CONNECT_REFUSED", "RETRY_REASONS", "RETRY_STALE_CONNECTION", "AiohttpExchange", "AiohttpResponse",
    "Body", "Deadlines", "Exchange", "LlhttpExchange", "UpstreamResponse", "replayable",
]

UPSTREAM_CLIENT_VARIABLE = "CANARYPROXY_UPSTREAM"


class Exchange(LlhttpExchange):
    """One upstream and its keep-alive pool (see the module docstring). `start()` inside the event
    loop before sending. An https upstream, or any with CANARYPROXY_UPSTREAM=aiohttp, gets an
    AiohttpExchange instead, which has the same interface."""

    __slots__ = ()

    def __new__(cls, role: Role, base_url: str, deadlines: Deadlines, **options: Any) -> Exchange:
        if base_url.lower().startswith("https:") or os.environ.get(UPSTREAM_CLIENT_VARIABLE) == "aiohttp":
            return AiohttpExchange(role, base_url, deadlines, **options)  # type: ignore[return-value]
        return super().__new__(cls)
