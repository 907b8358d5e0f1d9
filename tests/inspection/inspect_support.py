"""Running a response through an inspector the way the data plane does."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from multidict import CIMultiDict

from canaryproxy.core.types import Role, Outcome
from canaryproxy.inspection import Inspection, InspectionSettings, apply, inspector_for, read_request

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
STARTED = 100.0
FIRST_TOKEN_AT = 100.25  # what the constant clock says: every stream's ttft is 0.25


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def split_at(data: bytes, offsets: Sequence[int]) -> list[bytes]:
    cuts = [0, *sorted(offsets), len(data)]
    return [data[a:b] for a, b in zip(cuts, cuts[1:])]


def run(
    path: str,
    request: dict[str, Any] | bytes,
    pieces: Sequence[bytes],
    *,
    content_type: str = "text/event-stream",
    status: int = 200,
    settings: InspectionSettings | None = None,
    headers: dict[str, str] | None = None,
    complete: bool = True,
    now: Callable[[], float] = lambda: FIRST_TOKEN_AT,
) -> tuple[bytes, Outcome]:
    """Read the request, feed the response pieces, finish; (bytes forwarded, the applied outcome).

    `complete` False is a body the transport cut short, as the data plane tells `apply`.
    """
    settings = settings or InspectionSettings()
    body = request if isinstance(request, bytes) else json.dumps(request).encode()
    _, facts = read_request(path, body, settings)
    inspection = Inspection()
    inspector = inspector_for(facts, status, content_type, CIMultiDict(headers or {}), inspection, settings,
                              role=Role.CANARY, started=STARTED, now=now)
    forwarded = [inspector.feed(piece) for piece in pieces]
    forwarded.append(inspector.finish(complete))
    outcome = Outcome(role=Role.CANARY, started=STARTED)
    apply(outcome, inspection, cut_short=not complete)
    return b"".join(forwarded), outcome


def as_dict(outcome: Outcome) -> dict[str, Any]:
    return {field.name: getattr(outcome, field.name) for field in fields(outcome)}
