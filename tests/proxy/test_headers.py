"""Header hygiene both ways (RFC 9110 §7.6.1), checked with raw sockets and generated input."""

import asyncio

from hypothesis import HealthCheck, given, settings, strategies as st

from canaryproxy.server import CanaryProxy
from tests.support import RawPeer, Upstream, proxy_config, raw_request, status_of

HOP_BY_HOP = ["Keep-Alive", "TE", "Trailer", "Proxy-Authorization", "Proxy-Connection", "Upgrade",
              "Proxy-Authenticate"]
SPOOFED = {
    "X-Forwarded-For": "6.6.6.6",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "evil.example",
    "Forwarded": "for=6.6.6.6;proto=https",
    "X-Real-IP": "6.6.6.6",
}
token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(
    lambda t: t.strip("-") == t
)


async def through_proxy(request_head: str, trusted: list[str] | None = None):
    upstream = Upstream("stable")
    await upstream.start()
    config = proxy_config(upstream.url, upstream.url, trusted_proxies=trusted or [])
    proxy = CanaryProxy(config)
    await proxy.start()
    try:
        response = await raw_request(proxy.data_port, request_head.encode())
    finally:
        await proxy.shutdown()
        await upstream.stop()
    return response, upstream


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    named=st.lists(token, max_size=4, unique=True),
    name_spoofed=st.lists(st.sampled_from(sorted(SPOOFED)), unique=True),
    hop=st.lists(st.sampled_from(HOP_BY_HOP), unique=True),
    case=st.sampled_from([str.lower, str.upper, str.title]),
)
def test_connection_tokens_hop_by_hop_and_spoofed_forwarding_never_reach_the_upstream(named, name_spoofed, hop, case):
    custom = {f"x-{n}": "drop-me" for n in named}
    connection_tokens = [case(f"x-{n}") for n in named] + [case(h) for h in name_spoofed]
    head = "GET /h?q=1 HTTP/1.1\r\nHost: client.example:8080\r\n"
    head += f"Connection: keep-alive, {', '.join(connection_tokens)}\r\n" if connection_tokens else ""
    for name, value in {**custom, **SPOOFED, **{h: "x" for h in hop if h != "Upgrade"}}.items():
        head += f"{case(name)}: {value}\r\n"
    head += "X-End-To-End: keep-me\r\nConnection: close\r\n\r\n"

    response, upstream = asyncio.run(through_proxy(head))

    assert status_of(response) == 200
    seen = upstream.seen[0]
    for name in custom:
        assert seen.header(name) is None, f"{name} was named in Connection yet forwarded"
    for name in HOP_BY_HOP + ["Connection-Specific"]:
        assert seen.header(name) is None, f"hop-by-hop {name} was forwarded"
    assert seen.header("connection") in (None, "keep-alive")  # aiohttp's own, to the upstream
    # Forwarding headers are the proxy's own, even when the client named them in Connection.
    assert seen.headers["x-forwarded-for"] == ["127.0.0.1"]
    assert seen.headers["x-forwarded-proto"] == ["http"]
    assert seen.headers["x-forwarded-host"] == ["client.example:8080"]
    assert seen.header("forwarded") is None and seen.header("x-real-ip") is None
    assert seen.header("host") == f"127.0.0.1:{upstream.port}"
    assert seen.header("x-end-to-end") == "keep-me"


def test_forwarding_headers_from_a_trusted_proxy_are_kept_and_extended():
    head = ("GET / HTTP/1.1\r\nHost: public.example\r\nX-Forwarded-For: 203.0.113.9\r\n"
            "X-Forwarded-Proto: https\r\nX-Forwarded-Host: api.example\r\nConnection: close\r\n\r\n")
    response, upstream = asyncio.run(through_proxy(head, trusted=["127.0.0.0/8"]))
    assert status_of(response) == 200
    seen = upstream.seen[0]
    assert seen.headers["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1"]
    assert seen.header("x-forwarded-proto") == "https"
    assert seen.header("x-forwarded-host") == "api.example"


def test_request_id_is_passed_through_or_generated():
    head = "GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: abc-123\r\nConnection: close\r\n\r\n"
    response, upstream = asyncio.run(through_proxy(head))
    assert upstream.seen[0].header("x-request-id") == "abc-123"
    assert b"\r\nX-Request-Id: abc-123\r\n" in response

    head = "GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: has spaces and\ttabs\r\nConnection: close\r\n\r\n"
    response, upstream = asyncio.run(through_proxy(head))
    generated = upstream.seen[0].header("x-request-id")
    assert generated and len(generated) == 32 and generated.isalnum()


async def test_upstream_connection_headers_never_reach_the_client(make_proxy):
    body = b'{"ok":true}'
    peer = RawPeer(reply=lambda data: (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: application/json\r\n"
        b"Connection: keep-alive, X-Internal-Token\r\n"
        b"X-Internal-Token: secret\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"Proxy-Authenticate: Basic\r\n"
        b"Upgrade: h2c\r\n"
        b"X-Visible: yes\r\n"
        b"Set-Cookie: a=1\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    ) if b"\r\n\r\n" in data else None)
    await peer.start()
    proxy = await make_proxy(stable_url=peer.url)
    response = await raw_request(proxy.data_port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    await peer.stop()
    head = response.partition(b"\r\n\r\n")[0].lower()
    assert status_of(response) == 200
    for forbidden in (b"x-internal-token", b"keep-alive:", b"proxy-authenticate", b"upgrade"):
        assert forbidden not in head, forbidden
    assert b"x-visible: yes" in head and b"set-cookie: a=1" in head
    assert b"x-canary-version: stable" in head
    assert response.endswith(body)
