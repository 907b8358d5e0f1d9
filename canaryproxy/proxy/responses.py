"""Errors the proxy answers itself, in the OpenAI error shape.

`{"error": {"message", "type", "code", "param"}}` is what the OpenAI SDKs parse into an exception
(`openai.BadGatewayError`, `openai.APITimeoutError`, ...), so an SDK user sees a sensible error with
a readable message instead of a decoding failure. The role that was involved is named in the
message, in `error.upstream`, and in the served-by header.
"""

from __future__ import annotations

import json

from aiohttp import web

from canaryproxy.core.types import Role

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
) -> web.Response:
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
    response = web.Response(
        status=status,
        body=json.dumps({"error": error}).encode(),
        content_type="application/json",
        headers=headers,
    )
    if close:
        response.force_close()
    return response
