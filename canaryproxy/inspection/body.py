"""The inspector of whole JSON responses (`application/json`).

Chunks are forwarded untouched as they arrive and kept (up to `max_json_body_bytes`) to be parsed
once at the end. A body over the cap is not inspected: that is a size, not an error. A body that
ended abnormally is not parsed either; the data plane records why it ended.

The usual chat answer is read by the fast path (plainbody.py) straight into the Inspection; only
the others get the `Findings` the general readers fill, made when the body has ended rather than
for every response.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from canaryproxy.core.types import Role
from canaryproxy.inspection import jsonbytes
from canaryproxy.inspection.findings import Findings, findings_for, record
from canaryproxy.inspection.plainbody import read_plain_chat
from canaryproxy.inspection.request import RequestFacts
from canaryproxy.inspection.result import Inspection
from canaryproxy.inspection.settings import InspectionSettings

BodyReader = Callable[[dict[str, Any], Findings], None]


class BodyInspector:
    __slots__ = ("_read_body", "_inspection", "_facts", "_settings", "_role", "_started", "_share_text",
                 "_plain", "_pieces", "_size", "_record", "_produces_text")

    def __init__(
        self,
        read_body: BodyReader,
        inspection: Inspection,
        facts: RequestFacts,
        settings: InspectionSettings,
        *,
        role: Role,
        started: float,
        share_text: bool = False,
        record: bool = True,
        produces_text: bool = True,
        plain: bool = False,
    ) -> None:
        """`plain`: try the fast reader of plain chat answers (plainbody.py) first."""
        self._read_body = read_body
        self._inspection = inspection
        self._facts = facts
        self._settings = settings
        self._role = role
        self._started = started
        self._share_text = share_text
        self._plain = plain
        self._pieces: list[bytes] | None = []  # None once over the cap
        self._size = 0
        # False for error responses: only their guardrail evidence is read, no usage is expected.
        self._record = record
        self._produces_text = produces_text  # False for embeddings

    def feed(self, chunk: bytes) -> bytes:
        pieces = self._pieces
        if pieces is not None:
            self._size += len(chunk)
            if self._size > self._settings.max_json_body_bytes:
                self._pieces = None
            else:
                pieces.append(chunk)
        return chunk

    def finish(self, complete: bool) -> bytes:
        pieces = self._pieces
        if not complete or pieces is None:
            return b""
        self._pieces = None
        inspection, facts, settings = self._inspection, self._facts, self._settings
        try:
            body = jsonbytes.loads(pieces[0] if len(pieces) == 1 else b"".join(pieces))
            if not isinstance(body, dict):
                raise ValueError("the response body is not a JSON object")
            if self._plain and read_plain_chat(body, inspection, facts, settings, self._role):
                return b""
            # A whole body has no first-token time: no clock.
            found = findings_for(facts, settings, inspection, self._role, self._started, None, self._share_text)
            self._read_body(body, found)
            if self._record:
                record(found, facts, settings, produces_text=self._produces_text)
        except Exception:  # noqa: BLE001 - a response must never break on what we failed to read
            inspection.inspect_error = True
        return b""
