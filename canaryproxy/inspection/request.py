"""What the request body of an LLM API call tells the response inspectors.

The proxy buffers request bodies of LLM paths (up to a limit) and hands them here before
forwarding. Reading never raises: a body that is not the JSON object we expect is forwarded as it
came, and its response is inspected with the defaults.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from canaryproxy.inspection import jsonbytes
from canaryproxy.inspection.settings import InspectionSettings

CHAT = "chat.completions"
COMPLETIONS = "completions"
RESPONSES = "responses"
EMBEDDINGS = "embeddings"
MESSAGES = "messages"

# Path endings, most specific first ("/chat/completions" also ends in "/completions"). Anthropic's
# path keeps its "/v1": a bare ".../messages" is also the Assistants API's thread messages.
_PATH_ENDINGS = (
    ("/chat/completions", CHAT),
    ("/completions", COMPLETIONS),
    ("/responses", RESPONSES),
    ("/embeddings", EMBEDDINGS),
    ("/v1/messages", MESSAGES),
)

# Added after the request's opening brace when it has no stream_options at all.
_USAGE_MEMBER = b'"stream_options":{"include_usage":true},'


@dataclass(slots=True)
class RequestFacts:
    api: str = ""  # one of the constants above, or "" (not an LLM API we read)
    model: str | None = None
    stream: bool = False
    usage_injected: bool = False  # we asked the upstream for a final usage chunk the client did not
    output_schema: dict[str, Any] | None = None  # response_format json_schema, or the route's schema
    json_object: bool = False  # response_format {"type": "json_object"}
    tool_schemas: dict[str, dict[str, Any] | None] = field(default_factory=dict)


def api_for_path(path: str) -> str:
    """The LLM API a request path calls, or "".

    Any prefix is allowed ("/openai/deployments/x/chat/completions" on Azure, "/v1/..." elsewhere),
    as are a trailing slash and a query string.
    """
    path = path.partition("?")[0].rstrip("/")
    for ending, api in _PATH_ENDINGS:
        if path.endswith(ending):
            return api
    return ""


def read_request(
    path: str, body: bytes, settings: InspectionSettings, api: str | None = None
) -> tuple[bytes, RequestFacts]:
    """The body to forward and the facts for the response's inspector.

    With `settings.inject_stream_usage`, a streaming chat or completions request that did not ask
    for usage gets `stream_options.include_usage = true`, so the upstream reports its token counts;
    the stream inspector removes that extra chunk again before the client sees it. `api` is
    `api_for_path(path)` when the caller has already looked it up.
    """
    facts = RequestFacts(api=api_for_path(path) if api is None else api)
    if not facts.api:
        return body, facts
    try:
        request = jsonbytes.loads(body)
    except (ValueError, RecursionError):
        return body, facts
    if not isinstance(request, dict):
        return body, facts
    model = request.get("model")
    facts.model = model if isinstance(model, str) and model else None
    facts.stream = request.get("stream") is True
    _READERS.get(facts.api, _read_nothing)(request, facts)
    if facts.output_schema is None:
        facts.output_schema = _route_schema(path, settings)
    if settings.inject_stream_usage and facts.stream and facts.api in (CHAT, COMPLETIONS):
        injected = _with_usage_requested(body, request)
        if injected is not None:
            facts.usage_injected = True
            return injected, facts
    return body, facts


def _with_usage_requested(body: bytes, request: dict[str, Any]) -> bytes | None:
    """The body asking for usage, or None when it already does (or cannot be rewritten safely)."""
    options = request.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return None
    stripped = body.lstrip()
    if "stream_options" not in request and stripped.startswith(b"{"):
        # Splice rather than re-encode: every byte the client sent stays as it was.
        brace = len(body) - len(stripped) + 1
        return body[:brace] + _USAGE_MEMBER + body[brace:]
    try:
        # Written back out: read with json.loads, whose integers keep every digit (jsonbytes.py).
        rewritten = json.loads(body)
        options = rewritten.get("stream_options")
        rewritten["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        return json.dumps(rewritten, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except (ValueError, UnicodeEncodeError, RecursionError):
        # NaN or a lone surrogate (the client's JSON was not valid to begin with), or nesting
        # deeper than json's recursion allows (orjson reads 1,024 levels): sent as it came.
        return None


def _route_schema(path: str, settings: InspectionSettings) -> dict[str, Any] | None:
    """The schema of the longest configured path prefix that `path` falls under, segment-wise."""
    path = path.partition("?")[0]
    best: str | None = None
    for prefix in settings.route_schemas:
        base = prefix.rstrip("/")
        if (path == base or path.startswith(base + "/")) and (best is None or len(prefix) > len(best)):
            best = prefix
    return dict(settings.route_schemas[best]) if best is not None else None


def _read_chat(request: dict[str, Any], facts: RequestFacts) -> None:
    response_format = request.get("response_format")
    if isinstance(response_format, dict):
        kind = response_format.get("type")
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            facts.output_schema = _schema(spec.get("schema") if isinstance(spec, dict) else None)
        facts.json_object = kind == "json_object"
    for tool in _list(request.get("tools")):
        function = tool.get("function")
        if tool.get("type") == "function" and isinstance(function, dict):
            _add_tool(facts, function.get("name"), function.get("parameters"))
    for function in _list(request.get("functions")):  # the legacy form of tools
        _add_tool(facts, function.get("name"), function.get("parameters"))


def _read_responses(request: dict[str, Any], facts: RequestFacts) -> None:
    text = request.get("text")
    text_format = text.get("format") if isinstance(text, dict) else None
    if isinstance(text_format, dict):
        kind = text_format.get("type")
        if kind == "json_schema":
            facts.output_schema = _schema(text_format.get("schema"))
        facts.json_object = kind == "json_object"
    for tool in _list(request.get("tools")):
        if tool.get("type") == "function":
            _add_tool(facts, tool.get("name"), tool.get("parameters"))


def _read_messages(request: dict[str, Any], facts: RequestFacts) -> None:
    # Structured outputs: `output_config.format` (GA) or `output_format` (the earlier beta).
    output_config = request.get("output_config")
    output_format = output_config.get("format") if isinstance(output_config, dict) else None
    if output_format is None:
        output_format = request.get("output_format")
    if isinstance(output_format, dict) and output_format.get("type") == "json_schema":
        facts.output_schema = _schema(output_format.get("schema"))
    for tool in _list(request.get("tools")):
        _add_tool(facts, tool.get("name"), tool.get("input_schema"))


def _read_nothing(request: dict[str, Any], facts: RequestFacts) -> None:
    return None


_READERS = {CHAT: _read_chat, RESPONSES: _read_responses, MESSAGES: _read_messages}


def _add_tool(facts: RequestFacts, name: Any, parameters: Any) -> None:
    if isinstance(name, str) and name:
        facts.tool_schemas[name] = _schema(parameters)


def _schema(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _list(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []
