"""Pooled upstream connections the upstream closes: retried only when nothing can be applied twice.

The upstream here is a raw asyncio server on 127.0.0.1 that hangs up in the ways model servers do.
"Closes a connection when the next request arrives, without reading it" is the race a real
upstream loses at random (uvicorn's idle timer firing as a request arrives; a server that closes
after every response without `Connection: close`), made deterministic: the request is on a
connection that is already gone as far as the upstream is concerned, and it never reads it.
Every request the upstream *reads* is recorded, so "sent exactly once" is a count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from canaryproxy.config import Config
from canaryproxy.settings import proxy_settings

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
PARTIAL = b"HTTP/1.1 200 OK\r\nContent-Type: text/pl"


class HangingUpUpstream:
    """Answers the first `answer` requests of each connection (keep-alive, never `Connection:
    close`), then does `then` to every later request on it:

    * "close_unread": closes when the request arrives, without reading it (a stale connection);
    * "read_and_close": reads the request, then closes without a byte of response;
    * "partial": reads the request, sends part of a response head, closes.

    With `idle_close`, a request arriving on a connection idle that long is closed unread (the
    upstream's keep-alive timer fired as it arrived). `read` lists the targets of every request
    read, `unread` counts the requests closed unread, `connections` the connections accepted.
    """

    def __init__(self, answer: int | None = None, then: str = "close_unread",
                 idle_close: float | None = None) -> None:
        self.answer, self.then, self.idle_close = answer, then, idle_close
        self.read: list[str] = []
        self.unread = 0
        self.connections = 0
        self._server: asyncio.AbstractServer | None = None
        self.url = ""

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


class _Connection(asyncio.Protocol):
    def __init__(self, upstream: HangingUpUpstream) -> None:
        self.upstream = upstream
        self.buffer = b""
        self.answered = 0
        self.idle_since = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.upstream.connections += 1

    def data_received(self, data: bytes) -> None:
        up = self.upstream
        fresh_request = not self.buffer
        timed_out = up.idle_close is not None and time.monotonic() - self.idle_since >= up.idle_close
        done_answering = up.answer is not None and self.answered >= up.answer
        if fresh_request and (timed_out or (done_answering and up.then == "close_unread")):
            up.unread += 1
            self.transport.close()
            return
        self.buffer += data
        head, sep, rest = self.buffer.partition(b"\r\n\r\n")
        if not sep or len(rest) < _content_length(head):
            return
        self.buffer = b""
        up.read.append(head.split(b" ", 2)[1].decode())
        if not done_answering:
            self.answered += 1
            self.transport.write(OK)
            self.idle_since = time.monotonic()
            return
        if up.then == "partial":
            self.transport.write(PARTIAL)
        self.transport.close()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@pytest.fixture
async def upstream_factory() -> AsyncIterator:
    started: list[HangingUpUpstream] = []

    async def factory(**policy) -> HangingUpUpstream:
        upstream = HangingUpUpstream(**policy)
        await upstream.start()
        started.append(upstream)
        return upstream

    yield factory
    for upstream in started:
        await upstream.stop()


async def send(client: aiohttp.ClientSession, proxy, method: str, target: str, **kwargs) -> int:
    async with client.request(method, f"http://127.0.0.1:{proxy.data_port}{target}", **kwargs) as r:
        await r.read()
        return r.status


async def stale_retries(proxy) -> float:
    """canaryproxy_upstream_retries_total{version="stable", reason="stale_connection"}, scraped."""
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{proxy.admin_port}/metrics") as r:
            text = await r.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == "canaryproxy_upstream_retries_total"
                    and sample.labels == {"version": "stable", "reason": "stale_connection"}):
                return sample.value
    raise AssertionError("canaryproxy_upstream_retries_total{stable,stale_connection} not exported")


REPLAYABLE = {
    "GET": dict(method="GET"),
    "POST+Idempotency-Key": dict(method="POST", data=b'{"n": 1}', headers={"Idempotency-Key": "k"}),
}


@pytest.mark.parametrize("request_kind", list(REPLAYABLE), ids=list(REPLAYABLE))
async def test_every_response_closing_its_connection_loses_no_request_and_sends_none_twice(
    make_proxy, upstream_factory, request_kind
):
    # The upstream closes each connection under the next request: every request after the first
    # lands on a stale pooled connection.
    upstream = await upstream_factory(answer=1, then="close_unread")
    proxy = await make_proxy(stable_url=upstream.url)
    kwargs = dict(REPLAYABLE[request_kind])
    method = kwargs.pop("method")
    async with aiohttp.ClientSession() as client:
        statuses = [await send(client, proxy, method, f"/r/{i}", **kwargs) for i in range(200)]
    assert statuses.count(200) == 200, f"{200 - statuses.count(200)} of 200 failed"
    assert upstream.read == [f"/r/{i}" for i in range(200)]  # each read exactly once, in order
    assert upstream.unread == 199  # every later request met a closed connection first
    assert not [o for o in proxy.test_sink.outcomes if o.error is not None or o.failed]
    assert await stale_retries(proxy) == 199


async def streamed_body():
    # Past the 1 MiB the proxy reads ahead of a chunked body: it streams, so it cannot be replayed.
    yield b'{"pad": "' + b"x" * (1536 * 1024) + b'", "n": '
    yield b"1}"


NOT_REPLAYABLE = {
    "POST": dict(data=b'{"n": 1}'),  # RFC 9110 §9.2.2: a proxy must not retry it
    "streamed POST+Idempotency-Key": dict(data=None, headers={"Idempotency-Key": "k"}),
}


@pytest.mark.parametrize("request_kind", list(NOT_REPLAYABLE), ids=list(NOT_REPLAYABLE))
async def test_a_request_that_cannot_be_replayed_is_not_sent_again(
    make_proxy, upstream_factory, request_kind
):
    upstream = await upstream_factory(answer=1, then="close_unread")
    proxy = await make_proxy(stable_url=upstream.url)
    kwargs = dict(NOT_REPLAYABLE[request_kind])
    if kwargs["data"] is None:
        kwargs["data"] = streamed_body()  # chunked, streamed upstream: consumed once sent
    async with aiohttp.ClientSession() as client:
        assert await send(client, proxy, "GET", "/first") == 200
        assert await send(client, proxy, "POST", "/second", **kwargs) == 502
    assert upstream.read == ["/first"] and upstream.unread == 1 and upstream.connections == 1
    assert proxy.test_sink.outcomes[-1].error.value == "reset"
    assert await stale_retries(proxy) == 0


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_request_read_on_a_fresh_connection_then_dropped_is_502_and_never_resent(
    make_proxy, upstream_factory, method
):
    upstream = await upstream_factory(answer=0, then="read_and_close")
    proxy = await make_proxy(stable_url=upstream.url)
    async with aiohttp.ClientSession() as client:
        body = b"x" if method == "POST" else None
        for i in range(3):
            assert await send(client, proxy, method, f"/r/{i}", data=body) == 502
    assert upstream.read == ["/r/0", "/r/1", "/r/2"]  # one receipt per request
    assert upstream.connections == 3
    assert [o.error.value for o in proxy.test_sink.outcomes] == ["reset"] * 3
    assert await stale_retries(proxy) == 0


async def test_a_post_read_on_a_pooled_connection_then_dropped_is_not_resent(
    make_proxy, upstream_factory
):
    # Indistinguishable, on the wire, from a stale connection: the upstream may have started on it.
    upstream = await upstream_factory(answer=1, then="read_and_close")
    proxy = await make_proxy(stable_url=upstream.url)
    async with aiohttp.ClientSession() as client:
        assert await send(client, proxy, "GET", "/first") == 200
        assert await send(client, proxy, "POST", "/second", data=b'{"n": 1}') == 502
    assert upstream.read == ["/first", "/second"]
    assert await stale_retries(proxy) == 0


async def test_a_safe_request_is_sent_a_second_time_at_most(make_proxy, upstream_factory):
    # A GET read and dropped on a pooled connection is retried (Go's transport does the same: a safe
    # method may be repeated); the retry, on a fresh connection, is read and dropped too: 502, and
    # the upstream read it twice, never three times.
    upstream = await upstream_factory(answer=1, then="read_and_close")
    proxy = await make_proxy(stable_url=upstream.url)
    async with aiohttp.ClientSession() as client:
        assert await send(client, proxy, "GET", "/first") == 200
        upstream.answer = 0  # from now on no connection answers anything
        assert await send(client, proxy, "GET", "/second") == 502
    assert upstream.read == ["/first", "/second", "/second"]
    assert upstream.connections == 2
    assert await stale_retries(proxy) == 1


@pytest.mark.parametrize("answer", [0, 1], ids=["fresh-connection", "pooled-connection"])
async def test_part_of_a_response_then_a_close_is_502_and_never_resent(
    make_proxy, upstream_factory, answer
):
    upstream = await upstream_factory(answer=answer, then="partial")
    proxy = await make_proxy(stable_url=upstream.url)
    async with aiohttp.ClientSession() as client:
        if answer:
            assert await send(client, proxy, "GET", "/first") == 200
        assert await send(client, proxy, "GET", "/second") == 502
    assert upstream.read == ["/first", "/second"][1 - answer:]
    assert await stale_retries(proxy) == 0


async def test_idle_connections_are_dropped_before_the_upstream_drops_them(
    make_proxy, upstream_factory
):
    # The upstream closes connections idle for 0.4 s (uvicorn: 5 s); a proxy keeping them longer
    # sends a request into that close, and a POST cannot be retried.
    upstream = await upstream_factory(idle_close=0.4)
    short = await make_proxy(stable_url=upstream.url, upstreams={"keepalive": "200ms"})
    long = await make_proxy(stable_url=upstream.url, upstreams={"keepalive": "5s"})
    async with aiohttp.ClientSession() as client:
        for proxy in (short, long):
            assert await send(client, proxy, "POST", "/warm", data=b"{}") == 200
        await asyncio.sleep(0.5)  # the scenario itself: both pooled connections sit idle 0.5 s
        assert await send(client, short, "POST", "/after-idle", data=b"{}") == 200
        assert await send(client, long, "POST", "/after-idle", data=b"{}") == 502  # the race, lost
    assert upstream.read.count("/after-idle") == 1 and upstream.unread == 1


def test_the_default_keepalive_is_below_uvicorns_five_seconds():
    config = Config.model_validate({"upstreams": {"stable": "http://127.0.0.1:1",
                                                  "canary": "http://127.0.0.1:2"}})
    assert config.upstreams.keepalive == 4.0
    assert proxy_settings(config).upstream_keepalive == 4.0
