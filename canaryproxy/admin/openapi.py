"""The admin API described as OpenAPI 3.0 (served at /admin/openapi.json)."""

from __future__ import annotations

from typing import Any

from canaryproxy import __version__
from canaryproxy.admin.views import SERIES_METRICS, SERIES_POINTS
from canaryproxy.core.metrics import METRICS
from canaryproxy.core.window import MAX_SERIES_POINTS

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "code"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                           "code": {"type": "string"}},
        }
    },
}

_STATUS = {
    "type": "object",
    "required": ["phase", "weight"],
    "properties": {
        "phase": {"type": "string",
                  "enum": ["idle", "progressing", "paused", "promoted", "rolled_back", "static"]},
        "weight": {"type": "number", "minimum": 0, "maximum": 100},
        "explain": {"type": "string"},
        "stage": {"type": "object"},
        "versions": {"type": "object"},
        "tokens_estimated_share": {
            "type": "object",
            "description": "per version, the share of token counts in the window that the proxy "
                           "estimated because the response had no usage (null: no token counts)",
            "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1, "nullable": True},
        },
        "rules": {"type": "array", "items": {"type": "object"}},
        "judge": {"type": "object", "nullable": True},
    },
}

_DURATION = {"type": "string", "pattern": "^([0-9]+(\\.[0-9]+)?(ms|s|m|h|d))+$"}

_POINTS = {"type": "array", "items": {"type": "number", "nullable": True}}

_SERIES = {
    "type": "object",
    "required": ["span", "step", "t", "stable", "canary", "weight"],
    "additionalProperties": False,
    "properties": {
        "span": {"type": "number", "exclusiveMinimum": True, "minimum": 0,
                 "description": "seconds covered: the number of points times step"},
        "step": {"type": "number", "exclusiveMinimum": True, "minimum": 0,
                 "description": "seconds per point, a whole number of window buckets"},
        "t": {"type": "array", "items": {"type": "number"}, "maxItems": MAX_SERIES_POINTS,
              "description": "wall-clock end of each point (Unix seconds), oldest first; only "
                             "closed buckets count, so the newest point may be shorter than a step"},
        **{role: {
            "type": "object",
            "required": list(SERIES_METRICS),
            "additionalProperties": False,
            "properties": {name: {**_POINTS, "description": f"{METRICS[name].description} "
                                  f"({METRICS[name].unit.value}); null where the point has no "
                                  f"{METRICS[name].samples}"}
                           for name in SERIES_METRICS},
            "description": f"the {role} version, one value per point of t",
        } for role in ("stable", "canary")},
        "weight": {
            "type": "object",
            "required": ["t", "value"],
            "additionalProperties": False,
            "description": "canary weight over the span as a step function: value[i] is in force "
                           "from t[i] until t[i+1]; the last point is now",
            "properties": {"t": {"type": "array", "items": {"type": "number"}, "minItems": 2},
                           "value": {"type": "array", "minItems": 2,
                                     "items": {"type": "number", "minimum": 0, "maximum": 100}}},
        },
    },
}

_ACTOR = {"actor": {"type": "string", "maxLength": 200, "description": "who asks (the CLI sends $USER)"},
          "reason": {"type": "string", "maxLength": 1000, "description": "recorded in the decision and audit logs"}}


def _error_responses(*codes: int) -> dict[str, Any]:
    text = {400: "malformed request (nothing changed)", 401: "missing bearer token",
            415: "the body is not declared as application/json (nothing changed)",
            403: "wrong token, or an Origin that is not this listener",
            409: "the command does not apply in the current phase",
            421: "the Host names another server, not this admin listener (see admin.allowed_hosts)"}
    return {str(c): {"description": text[c], "content": {"application/json": {"schema": _ERROR}}}
            for c in codes}


def _mutation(summary: str, extra: dict[str, Any] | None = None, required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False,
                              "properties": {**_ACTOR, **(extra or {})}}
    if required:
        schema["required"] = required
    return {
        "post": {
            "summary": summary,
            "security": [{"bearer": []}],
            "requestBody": {"required": bool(required),
                            "content": {"application/json": {"schema": schema}}},
            "responses": {
                "200": {"description": "done; the new status",
                        "content": {"application/json": {"schema": _STATUS}}},
                **_error_responses(400, 401, 403, 409, 415),
            },
        }
    }


def spec() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "canaryproxy admin API", "version": __version__,
                 "description": "Watch and steer a canary rollout. Mutations need a bearer token "
                                "when admin.token is set; every mutation is audited."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": _with_name_checks({
            **_probe_paths(), **_read_paths(),
            "/admin/openapi.json": {"get": {"summary": "this document", "responses": {
                "200": _json_object("OpenAPI 3")}}},
            **_mutation_paths()}),
    }


def _with_name_checks(paths: dict[str, Any]) -> dict[str, Any]:
    """Every operation may be refused before it runs for naming another server (hosts.py): a
    malformed Host (400), a foreign Origin (403), a foreign Host (421)."""
    for operations in paths.values():
        for operation in operations.values():
            for code, response in _error_responses(400, 403, 421).items():
                operation["responses"].setdefault(code, response)
    return paths


def _json_object(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"type": "object"}}}}


def _probe_paths() -> dict[str, Any]:
    """The dashboard, the probes and the metrics."""
    return {
        "/": {"get": {"summary": "the dashboard: a page that reads this API", "responses": {
            "200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
        "/healthz": {"get": {"summary": "liveness", "responses": {"200": _json_object("alive")}}},
        "/readyz": {"get": {"summary": "readiness (fails while draining)", "responses": {
            "200": _json_object("ready"), "503": _json_object("draining")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
            "200": {"description": "text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
    }


def _read_paths() -> dict[str, Any]:
    """What the rollout is doing: status, the decision record, the series the dashboard charts."""
    return {
        "/admin/status": {"get": {
            "summary": "phase, stage, weight, hold left, per-version window summaries, rule states",
            "parameters": [{"name": "window", "in": "query", "required": False,
                            "description": "span of the per-version summaries, e.g. 1m, 5m",
                            "schema": _DURATION}],
            "responses": {"200": {"description": "status", "content": {"application/json": {"schema": _STATUS}}},
                          **_error_responses(400)}}},
        "/admin/decisions": {"get": {
            "summary": "the decision record: every transition and every evaluation that changed something",
            "parameters": [{"name": "limit", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 10000}}],
            "responses": {"200": {"description": "newest last", "content": {"application/json": {"schema": {
                "type": "object", "required": ["decisions"],
                "properties": {"decisions": {"type": "array", "items": {"type": "object"}}}}}}},
                **_error_responses(400)}}},
        "/admin/series": {"get": {
            "summary": "per-version metrics over the last span, one point per step, and the "
                       "canary weight over it (what the dashboard charts)",
            "parameters": [
                {"name": "span", "in": "query", "required": False, "schema": _DURATION,
                 "description": "how far back, e.g. 15m; at most the span the windows keep "
                                "(default: 15m, or less if the windows keep less)"},
                {"name": "step", "in": "query", "required": False, "schema": _DURATION,
                 "description": "time per point, a whole number of window buckets; at most "
                                f"{MAX_SERIES_POINTS} points (default: the shortest step giving "
                                f"at most {SERIES_POINTS})"},
            ],
            "responses": {
                "200": {"description": "the series",
                        "content": {"application/json": {"schema": _SERIES}}},
                "400": {"description": "span or step malformed, out of range, or too many points",
                        "content": {"application/json": {"schema": _ERROR}}},
            }}},
    }


def _mutation_paths() -> dict[str, Any]:
    return {
        "/admin/start": _mutation("start a rollout at its first stage"),
        "/admin/pause": _mutation("pause the rollout (the weight stays)"),
        "/admin/resume": _mutation("resume at the current stage and its weight"),
        "/admin/promote": _mutation("advance one stage, or to 100% with to_end",
                                    {"to_end": {"type": "boolean"}}),
        "/admin/rollback": _mutation("roll back: canary weight 0"),
        "/admin/weight": _mutation("set the canary weight by hand (pauses the automatic side)",
                                   {"weight": {"type": "number", "minimum": 0, "maximum": 100,
                                               "description": "percent, in steps of 0.01"}},
                                   required=["weight"]),
    }
