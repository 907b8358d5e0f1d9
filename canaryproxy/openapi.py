"""The admin API described as OpenAPI 3.0 (served at /admin/openapi.json)."""

from __future__ import annotations

from typing import Any

from canaryproxy import __version__

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
        "rules": {"type": "array", "items": {"type": "object"}},
        "judge": {"type": "object", "nullable": True},
    },
}

_ACTOR = {"actor": {"type": "string", "maxLength": 200, "description": "who asks (the CLI sends $USER)"},
          "reason": {"type": "string", "maxLength": 1000, "description": "recorded in the decision and audit logs"}}


def _error_responses(*codes: int) -> dict[str, Any]:
    text = {400: "malformed request (nothing changed)", 401: "missing bearer token",
            403: "wrong token", 409: "the command does not apply in the current phase"}
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
                **_error_responses(400, 401, 403, 409),
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
        "paths": {
            "/healthz": {"get": {"summary": "liveness", "responses": {
                "200": {"description": "alive", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/readyz": {"get": {"summary": "readiness (fails while draining)", "responses": {
                "200": {"description": "ready", "content": {"application/json": {"schema": {"type": "object"}}}},
                "503": {"description": "draining", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
                "200": {"description": "text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/admin/status": {"get": {
                "summary": "phase, stage, weight, hold left, per-version window summaries, rule states",
                "parameters": [{"name": "window", "in": "query", "required": False,
                                "description": "span of the per-version summaries, e.g. 1m, 5m",
                                "schema": {"type": "string",
                                           "pattern": "^([0-9]+(\\.[0-9]+)?(ms|s|m|h|d))+$"}}],
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
            "/admin/openapi.json": {"get": {"summary": "this document", "responses": {
                "200": {"description": "OpenAPI 3", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
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
        },
    }
