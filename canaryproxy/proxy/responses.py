"""Errors the proxy answers itself, in the OpenAI error shape.

`{"error": {"message", "type", "code", "param"}}` is what the OpenAI SDKs parse into an exception
(`openai.BadGatewayError`, `openai.APITimeoutError`, ...), so an SDK user sees a sensible error with
a readable message instead of a decoding failure. The role that was involved is named in the
message, in `error.upstream`, and in the served-by header.
"""

from __future__ import annotations

import json
import logging

from canaryproxy.core.types import ErrorKind, Outcome, Role
from canaryproxy.errors import UpstreamError
from canaryproxy.proxy.http import Response

log = logging.getLogger("canaryproxy.proxy")

_TIMEOUTS = frozenset({ErrorKind.CONNECT_TIMEOUT, ErrorKind.FIRST_BYTE_TIMEOUT})  # 504, not 502

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "upstream_timeout",
}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    role: Role | None = None,
    served_by_header: str | None = None,
    request_id: str | None = None,
    retry_after: int | None = None,
    close: bool = False,
) -> Response:
    error: dict[str, object] = {
        "message": message,
        "type": _TYPE_BY_STATUS.get(status, "proxy_error"),
        "code": code,
        "param": None,
    }
    if role is not None:
        error["upstream"] = role.value
    headers = {}
    if role is not None and served_by_header:
        headers[served_by_header] = role.value
    if request_id:
        headers["X-Request-Id"] = request_id
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    response = Response(
        status=status,
        body=json.dumps({"error": error}).encode(),
        content_type="application/json",
        headers=headers,
    )
    if close:
        response.force_close()
    return response


def failure_status(kind: ErrorKind) -> int:
    """What answers an upstream that gave no response: 504 for a timeout, 502 otherwise."""
    return 504 if kind in _TIMEOUTS else 502


def upstream_failure(outcome: Outcome, error: UpstreamError, served_by_header: str | None) -> Response:
    """No response from the upstream: answer 502 or 504 in the OpenAI error shape."""
    status = outcome.status = failure_status(error.kind)
    outcome.error = error.kind
    log.warning("%s [request_id=%s]", error.message, outcome.request_id)
    return error_response(
        status, f"upstream_{error.kind.value}", error.message, role=outcome.role,
        served_by_header=served_by_header, request_id=outcome.request_id,
    )


def cut_short(outcome: Outcome) -> bool:
    """The transport's side of truncation: the response had begun (its head arrived: `ttfb`) and its
    body was then broken off by the upstream or by shutdown. A client that left cut nothing short
    that it will ever see, and an answer of our own (502, 408) is complete."""
    error = outcome.error
    if error is None or outcome.ttfb is None:
        return False
    return error is ErrorKind.SHUTDOWN or error.is_upstream_fault
