"""The admin API answers only requests that name it (Host, and Origin when sent): a DNS-rebinding
page cannot steer the rollout. And a weight below one bucket (0.01%) is refused however small.

Real proxies on 127.0.0.1 (and ::1), raw sockets for the exact bytes, curl and the CLI as the
operator would run them."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from canaryproxy.admin.hosts import ListenerNames, Refusal, parse_authority
from tests.support import raw_request
from tests.test_rollout_e2e import SHORT_PLAN

MANUAL = {**SHORT_PLAN, "start": "manual"}


def _status_and_body(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body.strip().startswith(b"{") else {}


async def _request(port: int, method: str, path: str, *headers: str, body: bytes = b"",
                   version: str = "1.1") -> tuple[int, dict]:
    lines = [f"{method} {path} HTTP/{version}", *headers, f"Content-Length: {len(body)}", "Connection: close"]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    return _status_and_body(await raw_request(port, data))


async def _rolling(make_proxy, tmp_path: Path, **admin):
    proxy = await make_proxy(rollout=MANUAL, admin=admin, state={"path": str(tmp_path / "state.json")})
    await proxy.controller.command("start", actor="test")
    assert proxy.controller.state.phase.value == "progressing"
    return proxy


def _audit(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


async def test_the_curl_from_the_issue_does_not_roll_back(make_proxy, tmp_path):
    proxy = await _rolling(make_proxy, tmp_path)
    port = proxy.admin_port
    # Issue 10, item 4, verbatim but for the port the test proxy got, then with that port too.
    for evil in ("evil.example:19090", f"evil.example:{port}"):
        process = await asyncio.create_subprocess_exec(
            "curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-X", "POST", "-H", f"Host: {evil}",
            "-H", f"Origin: http://{evil}", "-H", "Content-Type: application/json",
            "-d", '{"reason":"x"}', f"http://127.0.0.1:{port}/admin/rollback",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 20)
        body, _, code = out.decode().rpartition("\n")
        assert code == "421", (out, err)
        error = json.loads(body)["error"]
        assert error["code"] == "misdirected_host"
        assert f"Host '{evil}' does not name this admin listener" in error["message"]
        assert f"127.0.0.1:{port}" in error["message"] and "admin.allowed_hosts" in error["message"]
    assert proxy.controller.state.phase.value == "progressing" and proxy.weight == 20
    refused = _audit(tmp_path)
    assert [(e["action"], e["status"], e["accepted"], e["host"]) for e in refused] == [
        ("rollback", 421, False, "evil.example:19090"), ("rollback", 421, False, f"evil.example:{port}")]


@pytest.mark.parametrize("host", [
    "evil.example:{port}",      # a rebound name, right port
    "evil.example",             # no port: 80
    "127.0.0.1",                # our address, but port 80 is not this listener
    "127.0.0.1:1",              # another port on this host
    "localhost:1",
    "127.0.0.2:{port}",         # another loopback address: not the one this listener is bound to
    "127.0.0.1.evil.example:{port}",
    "0.0.0.0:{port}",           # the "0.0.0.0 day" name
])
async def test_a_host_that_is_not_the_listener_gets_421_for_reads_too(make_proxy, host):
    proxy = await make_proxy()
    port = proxy.admin_port
    for path in ("/admin/status", "/metrics", "/", "/admin/openapi.json", "/nowhere"):
        status, body = await _request(port, "GET", path, f"Host: {host.format(port=port)}")
        assert status == 421, (host, path)
        assert body["error"]["code"] == "misdirected_host", (host, path)


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LocalHost.:{port}",
                                  "[::1]:{port}"])
async def test_the_listeners_own_names_are_answered(make_proxy, host):
    proxy = await make_proxy()
    port = proxy.admin_port
    status, body = await _request(port, "GET", "/admin/status", f"Host: {host.format(port=port)}")
    assert status == 200 and body["phase"] == "static"


async def test_a_malformed_host_is_400_and_http_1_0_without_host_is_answered(make_proxy):
    proxy = await make_proxy()
    port = proxy.admin_port
    for host in ("a b", "127.0.0.1:99999", "[zz::1]:80", "user@127.0.0.1:{port}", "127.0.0.1:{port}/x"):
        status, body = await _request(port, "GET", "/healthz", f"Host: {host.format(port=port)}")
        assert (status, body["error"]["code"]) == (400, "bad_host"), host
    assert (await _request(port, "GET", "/healthz", version="1.0"))[0] == 200


async def test_an_absolute_form_target_is_the_name_checked_not_the_host_header(make_proxy, tmp_path):
    proxy = await _rolling(make_proxy, tmp_path)
    port = proxy.admin_port
    status, body = await _request(port, "POST", f"http://evil.example:{port}/admin/rollback",
                                  f"Host: 127.0.0.1:{port}", "Content-Type: application/json", body=b"{}")
    assert (status, body["error"]["code"]) == (421, "misdirected_host")
    assert proxy.controller.state.phase.value == "progressing"
    status, _ = await _request(port, "GET", f"http://localhost:{port}/admin/status", "Host: evil.example")
    assert status == 200


@pytest.mark.parametrize("origin", ["http://evil.example:{port}", "null", "http://127.0.0.1:1",
                                    "https://127.0.0.1:{port}", "http://127.0.0.1:{port}/x",
                                    "file://", "http://127.0.0.1.evil.example:{port}"])
async def test_a_foreign_origin_gets_403_and_changes_nothing(make_proxy, tmp_path, origin):
    proxy = await _rolling(make_proxy, tmp_path)
    port = proxy.admin_port
    status, body = await _request(port, "POST", "/admin/rollback", f"Host: 127.0.0.1:{port}",
                                  f"Origin: {origin.format(port=port)}", "Content-Type: application/json",
                                  body=b'{"reason": "x"}')
    assert (status, body["error"]["code"]) == (403, "cross_origin"), origin
    assert "is not this admin listener" in body["error"]["message"]
    assert proxy.controller.state.phase.value == "progressing" and proxy.weight == 20
    [entry] = _audit(tmp_path)
    assert (entry["status"], entry["origin"]) == (403, origin.format(port=port))


async def test_the_dashboards_own_origin_may_roll_back(make_proxy, tmp_path):
    proxy = await _rolling(make_proxy, tmp_path)
    port = proxy.admin_port
    status, body = await _request(port, "POST", "/admin/rollback", f"Host: localhost:{port}",
                                  f"Origin: http://localhost:{port}", "Content-Type: application/json",
                                  body=b'{"reason": "from the dashboard"}')
    assert status == 200 and body["phase"] == "rolled_back"


async def test_allowed_hosts_adds_names_and_nothing_else(make_proxy, tmp_path):
    proxy = await _rolling(make_proxy, tmp_path, allowed_hosts=["Canary-Admin.internal", "ops.example:8443"])
    port = proxy.admin_port
    answered = [("canary-admin.internal", None), (f"canary-admin.internal:{port}", "https://canary-admin.internal"),
                ("ops.example:8443", "https://ops.example:8443")]
    for host, origin in answered:
        headers = [f"Host: {host}"] + ([f"Origin: {origin}"] if origin else [])
        assert (await _request(port, "GET", "/admin/status", *headers))[0] == 200, host
    refused = [("ops.example", None, 421), (f"ops.example:{port}", None, 421), ("admin.internal", None, 421),
               (f"127.0.0.1:{port}", "https://ops.example", 403)]
    for host, origin, expected in refused:
        headers = [f"Host: {host}"] + ([f"Origin: {origin}"] if origin else [])
        assert (await _request(port, "GET", "/admin/status", *headers))[0] == expected, host


async def test_an_ipv6_loopback_listener_answers_its_names(make_proxy):
    proxy = await make_proxy(admin={"listen": "[::1]:0"})
    port = proxy.admin_port
    reader, writer = await asyncio.open_connection("::1", port)
    for host, expected in ((f"[::1]:{port}", 200), (f"localhost:{port}", 200), (f"127.0.0.1:{port}", 200),
                           (f"[::2]:{port}", 421), (f"evil.example:{port}", 421)):
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        await reader.readexactly(length)
        assert int(head.split(b" ")[1]) == expected, host
    writer.close()


async def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "canaryproxy", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})})
    out, err = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode, out.decode(), err.decode()


async def test_the_cli_works_by_address_and_by_localhost_and_says_what_is_wrong(make_proxy, tmp_path):
    proxy = await _rolling(make_proxy, tmp_path)
    port = proxy.admin_port
    for base in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        code, out, err = await _cli("status", "--json", "--admin", base)
        assert code == 0 and json.loads(out)["phase"] == "progressing", err
    code, out, err = await _cli("rollback", "--reason", "via localhost", "--admin", f"http://localhost:{port}")
    assert code == 0 and proxy.controller.state.phase.value == "rolled_back", err


# --- the weight: one bucket (0.01%) is the smallest step, for subnormals too ----------------------


@pytest.mark.parametrize("weight", ["1e-320", "5e-324", "1e-12", "0.001", "0.015", "12.345"])
async def test_a_weight_below_one_bucket_step_is_refused(make_proxy, tmp_path, weight):
    proxy = await _rolling(make_proxy, tmp_path)
    port = proxy.admin_port
    status, body = await _request(port, "POST", "/admin/weight", f"Host: 127.0.0.1:{port}",
                                  "Content-Type: application/json", body=b'{"weight": %s}' % weight.encode())
    assert status == 400, weight
    assert "weight has at most two decimals (0.01% steps)" in body["error"]["message"], weight
    assert proxy.weight == 20 and proxy.controller.state.phase.value == "progressing"


@pytest.mark.parametrize("weight, expected", [("0.01", 0.01), ("0", 0.0), ("0.07", 0.07), ("33.33", 33.33)])
async def test_whole_bucket_weights_are_accepted(make_proxy, tmp_path, weight, expected):
    proxy = await _rolling(make_proxy, tmp_path)
    port = proxy.admin_port
    status, body = await _request(port, "POST", "/admin/weight", f"Host: 127.0.0.1:{port}",
                                  "Content-Type: application/json", body=b'{"weight": %s}' % weight.encode())
    assert status == 200 and proxy.weight == expected


# --- the names, without sockets --------------------------------------------------------------------


def test_names_of_a_wildcard_listener_are_its_arrival_address_and_loopback_only_on_loopback():
    names = ListenerNames("0.0.0.0")
    names.check("10.1.2.3:9090", None, ("10.1.2.3", 9090))
    names.check("127.0.0.1:9090", "http://localhost:9090", ("::ffff:127.0.0.1", 9090))
    with pytest.raises(Refusal) as refused:
        names.check("localhost:9090", None, ("10.1.2.3", 9090))  # arrived from the network
    assert refused.value.status == 421
    with pytest.raises(Refusal):
        names.check("0.0.0.0:9090", None, ("127.0.0.1", 9090))


def test_a_configured_host_name_is_one_of_the_names():
    names = ListenerNames("admin.internal")
    names.check("admin.internal:9090", "http://admin.internal:9090", ("10.1.2.3", 9090))
    with pytest.raises(Refusal):
        names.check("admin.internal:9091", None, ("10.1.2.3", 9090))


@pytest.mark.parametrize("text, expected", [("a.example", ("a.example", None)), ("A.Example.:80", ("a.example", 80)),
                                            ("[::1]:9090", ("::1", 9090)), ("10.0.0.1:", ("10.0.0.1", None))])
def test_authorities_parse(text, expected):
    authority = parse_authority(text)
    assert (authority.host, authority.port) == expected


def test_the_openapi_document_lists_the_refusals_on_every_operation():
    from canaryproxy.admin.openapi import spec

    for path, operations in spec()["paths"].items():
        for method, operation in operations.items():
            assert {"400", "403", "421"} <= set(operation["responses"]), (method, path)
