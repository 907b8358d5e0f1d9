"""What changes the judge besides requests: a rollout restarts, the latency baseline is fixed.

They travel with the requests (control/evidence.py says why), so they have a plain-JSON form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Restart:
    """A new rollout starts: the judge forgets everything and its baseline is fixed anew."""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "restart"}


@dataclass(frozen=True, slots=True)
class LatencyBaseline:
    """The judge's latency thresholds, fixed from stable's window."""

    p95: float
    p99: float

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "latency_baseline", "p95": self.p95, "p99": self.p99}


EvidenceEvent = Restart | LatencyBaseline


def event_from_dict(document: Any) -> EvidenceEvent:
    """ValueError when `document` is not an event `to_dict` wrote."""
    kind = document.get("kind") if isinstance(document, dict) else None
    if kind == "restart":
        return Restart()
    if kind == "latency_baseline":
        p95, p99 = document.get("p95"), document.get("p99")
        if isinstance(p95, (int, float)) and isinstance(p99, (int, float)):
            return LatencyBaseline(float(p95), float(p99))
    raise ValueError(f"not an evidence event: {document!r}")
