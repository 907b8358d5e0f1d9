"""Error of the completion-token estimate per server family, before and after counting deltas.

    .venv/bin/python bench/token_estimate.py

Reads tests/fixtures/streams (bench/stream_fixtures.py) through the real stream inspector. Before:
characters ÷ 4, the estimate until deltas were counted; after: `Outcome.estimated_tokens`.
Error = estimate / known − 1; per family the median and the worst (largest |error|).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from multidict import CIMultiDict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from canaryproxy.core.types import Outcome, Role  # noqa: E402
from canaryproxy.inspection import Inspection, InspectionSettings, apply, inspector_for, read_request  # noqa: E402

STREAMS = ROOT / "tests" / "fixtures" / "streams"
REQUEST = b'{"model":"m","stream":true,"stream_options":{"include_usage":true}}'


def outcome_of(data: bytes) -> Outcome:
    settings = InspectionSettings()
    _, facts = read_request("/v1/chat/completions", REQUEST, settings)
    inspection = Inspection()
    inspector = inspector_for(facts, 200, "text/event-stream", CIMultiDict(), inspection, settings,
                              role=Role.CANARY, started=0.0, now=lambda: 0.0)
    inspector.feed(data)
    inspector.finish(True)
    outcome = Outcome(role=Role.CANARY, started=0.0)
    apply(outcome, inspection, False)
    return outcome


def main() -> None:
    counts = json.loads((STREAMS / "counts.json").read_text())
    errors: dict[str, tuple[list[float], list[float]]] = {}
    for name, known in sorted(counts.items()):
        outcome = outcome_of((STREAMS / name).read_bytes())
        assert outcome.output_chars is not None and outcome.estimated_tokens is not None
        truth = known["completion_tokens"]
        before, after = errors.setdefault(known["family"], ([], []))
        before.append(-(-outcome.output_chars // 4) / truth - 1)
        after.append(outcome.estimated_tokens / truth - 1)
    print(f"{'family':<12}{'before median':>14}{'worst':>8}{'after median':>14}{'worst':>8}")
    for family, (before, after) in errors.items():
        worst_before, worst_after = max(before, key=abs), max(after, key=abs)
        print(f"{family:<12}{statistics.median(before):>+14.0%}{worst_before:>+8.0%}"
              f"{statistics.median(after):>+14.0%}{worst_after:>+8.0%}")


if __name__ == "__main__":
    main()
