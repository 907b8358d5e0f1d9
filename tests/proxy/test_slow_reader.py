"""A client that stops reading is reset, not closed behind megabytes it will never read.

`transport.abort()` alone drops the event loop's buffer only: the kernel still holds its send
buffer for the connection and sends the FIN after it, so a client that reads nothing never sees the
close, and the proxy's socket sits in FIN-WAIT-1 with megabytes queued. Linux only (/proc/net/tcp).
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from aiohttp import web

from canaryproxy.core.types import ErrorKind
from tests.support import eventually

PROC_NET_TCP = Path("/proc/net/tcp")
pytestmark = pytest.mark.skipif(not PROC_NET_TCP.exists(), reason="needs Linux /proc/net/tcp")

TCP_STATES = {"01": "ESTABLISHED", "04": "FIN_WAIT1", "05": "FIN_WAIT2", "06": "TIME_WAIT",
              "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0B": "CLOSING"}


def kernel_sockets(local_port: int, remote_port: int) -> list[tuple[str, int]]:
    """(state, bytes queued to send) of every IPv4 socket 127.0.0.1:local_port <-> remote_port."""
    found = []
    for line in PROC_NET_TCP.read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
        if int(local.split(":")[1], 16) == local_port and int(remote.split(":")[1], 16) == remote_port:
            found.append((TCP_STATES.get(state, state), int(queues.split(":")[0], 16)))
    return found


async def endless(request: web.Request) -> web.StreamResponse:
    """Streams as fast as the proxy takes it, far more than any socket buffer holds."""
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await response.prepare(request)
    chunk = b"x" * 65536
    for _ in range(4096):  # 256 MiB at most: bounded
        await response.write(chunk)
    await response.write_eof()
    return response


def read_until_closed(sock: socket.socket, limit: int, timeout: float) -> tuple[str, int]:
    """Read what the client's socket holds: how it ended ("reset", "eof", "open") and the bytes."""
    sock.settimeout(0.05)
    received, deadline = 0, time.monotonic() + timeout
    while received < limit and time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return "reset", received
        except socket.timeout:
            continue
        if not data:
            return "eof", received
        received += len(data)
    return "open", received


async def test_a_client_that_stops_reading_is_reset_and_nothing_stays_queued(make_proxy, upstreams):
    stable, _ = upstreams
    stable.on("GET", "/endless", endless)
    proxy = await make_proxy(timeouts={"client_write": "300ms"})

    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    client.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(client, ("127.0.0.1", proxy.data_port))
    client_port = client.getsockname()[1]
    await loop.sock_sendall(client, b"GET /endless HTTP/1.1\r\nHost: a\r\n\r\n")
    try:
        # The client reads nothing; the proxy gives up on it after the write timeout.
        outcome = await eventually(
            lambda: next(iter(proxy.test_sink.outcomes), None), timeout=2.5)
        assert outcome.error is ErrorKind.CLIENT_WRITE_TIMEOUT
        assert outcome.bytes_out > 64 * 1024

        # The proxy's side of the connection is gone from the kernel, not closing behind a queue.
        deadline = time.monotonic() + 1.0
        while (left := kernel_sockets(proxy.data_port, client_port)) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert not left, f"the proxy's socket is still there, (state, bytes queued): {left}"

        # The client learns at its next read: a reset, after at most what its own buffer held.
        ended, received = await asyncio.to_thread(read_until_closed, client, 1024**2, 1.0)
        assert ended == "reset", f"{ended} after {received} bytes"
    finally:
        client.close()
