"""The decision record: why every transition happened, and every evaluation where a verdict changed.

Each record is a JSON-safe dict, kept (the newest `history`) for the admin API and the dashboard
and written as one JSON log line (logger `canaryproxy.decisions`) for whatever collects logs:

    {"at": "2026-12-02T17:20:01.123Z", "time": 1796...., "kind": "transition" | "decision" |
     "evaluation", "trigger": "hold_passed" | "rule_failed" | "command" | ..., "summary": "...",
     "actor": "alice" | null, "before": {"phase", "stage", "weight"} | null,
     "after": {"phase", "stage", "weight"}, "generation": 7, "verdicts": [...]}

Times in records are wall-clock: they are compared across processes and shown to people.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from canaryproxy.alerts import json_safe
from canaryproxy.core.stages import Decision, RolloutState
from canaryproxy.core.types import Status, Verdict

decision_log = logging.getLogger("canaryproxy.decisions")


def verdict_record(verdict: Verdict) -> dict[str, Any]:
    return {
        "source": verdict.source,
        "status": verdict.status.value,
        "reason": verdict.reason,
        "also_on_stable": verdict.also_on_stable,
        "details": json_safe(verdict.details),
    }


def iso_time(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 1000):03d}Z"


class DecisionRecord:
    """The newest `history` records, oldest first, and one log line per record."""

    def __init__(self, history: int = 500) -> None:
        self.history = history
        self._records: deque[dict[str, Any]] = deque(maxlen=history)
        # Where this process's records are also sent, when several share the history.
        self.publish: Callable[[dict[str, Any]], None] | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def recent(self, limit: int) -> list[dict[str, Any]]:
        return list(self._records)[-limit:]

    def append(self, record: dict[str, Any]) -> None:
        self._records.append(record)
        decision_log.info(json.dumps(record, sort_keys=True))
        if self.publish is not None:
            self.publish(record)

    def add_remote(self, record: dict[str, Any]) -> None:
        """A record another process made (its own log has the line)."""
        self._records.append(record)

    def replace(self, records: Iterable[dict[str, Any]]) -> None:
        """Start from the shared history (oldest first)."""
        self._records.clear()
        self._records.extend(records)

    def transition(self, decision: Decision, wall: float, actor: str | None = None) -> dict[str, Any]:
        """Record what `stages` decided (a transition, or a decision that changed nothing)."""
        moved = (decision.phase_before, decision.stage_before, decision.weight_before) != (
            decision.phase_after, decision.stage_after, decision.weight_after)
        record = {
            "at": iso_time(wall),
            "time": wall,
            "kind": "transition" if moved else "decision",
            "trigger": decision.trigger,
            "summary": decision.summary,
            "actor": actor,
            "before": {"phase": decision.phase_before.value, "stage": decision.stage_before + 1,
                       "weight": decision.weight_before},
            "after": {"phase": decision.phase_after.value, "stage": decision.stage_after + 1,
                      "weight": decision.weight_after},
            "generation": decision.generation,
            "verdicts": [verdict_record(v) for v in decision.verdicts],
        }
        self.append(record)
        return record

    def evaluation(self, wall: float, verdicts: Sequence[Verdict], previous: Mapping[str, Status],
                   state: RolloutState) -> dict[str, Any]:
        """Record an evaluation that changed no state but changed a verdict."""
        changes = [f"{v.source}: {previous.get(v.source, 'new')} -> {v.status}" for v in verdicts
                   if previous.get(v.source) is not v.status]
        record = {
            "at": iso_time(wall),
            "time": wall,
            "kind": "evaluation",
            "trigger": "evaluation",
            "summary": "; ".join(changes),
            "actor": None,
            "before": None,
            "after": {"phase": state.phase.value, "stage": state.stage + 1, "weight": state.weight},
            "generation": state.generation,
            "verdicts": [verdict_record(v) for v in verdicts],
        }
        self.append(record)
        return record


def boot_decision(state: RolloutState, t: float, trigger: str, summary: str) -> Decision:
    """A decision at start-up that moves nothing: what the process found and did."""
    return Decision(t=t, trigger=trigger, summary=summary, phase_before=state.phase,
                    stage_before=state.stage, weight_before=state.weight, phase_after=state.phase,
                    stage_after=state.stage, weight_after=state.weight, generation=state.generation)
