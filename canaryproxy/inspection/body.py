"""The inspector of whole JSON responses (`application/json`).

Chunks are forwarded untouched as they arrive and kept (up to `max_json_body_bytes`) to be parsed
once at the end. A body over the cap is not inspected: that is a size, not an error. A body that
ended abnormally is not parsed either; the data plane records why it ended.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from canaryproxy.inspection import jsonbytes
from canaryproxy.inspection.findings import Findings, record
from canaryproxy.inspection.request import RequestFacts
from canaryproxy.inspection.settings import InspectionSettings

BodyReader = Callable[[dict[str, Any], Findings], None]


class BodyInspector:
    __slots__ = ("_read_body", "_found", "_facts", "_settings", "_pieces", "_size", "_record", "_produces_text")

    def __init__(
        self,
        read_body: BodyReader,
        found: Findings,
        facts: RequestFacts,
        settings: InspectionSettings,
        *,
        record: bool = True,
        produces_text: bool = True,
    ) -> None:
        self._read_body = read_body
        self._found = found
        self._facts = facts
        self._settings = settings
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
        if not complete or self._pieces is None:
            return b""
        found = self._found
        try:
            body = jsonbytes.loads(b"".join(self._pieces))
            if not isinstance(body, dict):
                raise ValueError("the response body is not a JSON object")
            self._read_body(body, found)
            if self._record:
                record(found, self._facts, self._settings, produces_text=self._produces_text)
        except Exception:  # noqa: BLE001 - a response must never break on what we failed to read
            found.inspection.inspect_error = True
        self._pieces = None
        return b""
