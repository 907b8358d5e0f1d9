"""The floor's header hygiene: what it must strip to be a fair (minimal but correct) reference."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from floor_proxy import end_to_end


def test_hop_by_hop_headers_and_those_named_in_connection_are_dropped() -> None:
    incoming = CIMultiDictProxy(CIMultiDict([
        ("Host", "client.example"), ("Connection", "keep-alive, X-Secret"), ("Keep-Alive", "timeout=5"),
        ("X-Secret", "1"), ("TE", "trailers"), ("Transfer-Encoding", "chunked"),
        ("Proxy-Authorization", "Basic eA=="), ("Content-Type", "application/json"), ("x-user-id", "u1"),
    ]))
    assert list(end_to_end(incoming).items()) == [("Content-Type", "application/json"), ("x-user-id", "u1")]
