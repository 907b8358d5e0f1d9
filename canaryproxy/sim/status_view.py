"""The status document as a readable table, for `canaryproxy status` and the demo."""

from __future__ import annotations

from typing import Any

from canaryproxy.core.units import format_duration


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}ms"


def _pct(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.2f}%"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def progress_bar(done: float, total: float, width: int = 20) -> str:
    fraction = 1.0 if total <= 0 else max(0.0, min(1.0, done / total))
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _metric(summary: dict[str, Any], name: str) -> float | None:
    return (summary.get("metrics") or {}).get(name, {}).get("value")


def _samples(summary: dict[str, Any], name: str) -> int:
    return int((summary.get("metrics") or {}).get(name, {}).get("samples") or 0)


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:.5f}"


VERSION_ROWS = (
    ("requests", lambda s: str(s.get("requests", 0))),
    ("req/s", lambda s: _num(_metric(s, "request_rate"), 1)),
    ("error rate", lambda s: _pct(_metric(s, "error_rate"))),
    ("latency p50", lambda s: _ms(_metric(s, "latency_p50"))),
    ("latency p95", lambda s: _ms(_metric(s, "latency_p95"))),
    ("ttft p95", lambda s: _ms(_metric(s, "ttft_p95"))),
    ("tokens/request", lambda s: _num(_metric(s, "tokens_per_request"), 0)),
    ("guardrail rate", lambda s: _pct(_metric(s, "guardrail_rate"))),
    ("schema failures", lambda s: _pct(_metric(s, "schema_failure_rate"))),
    ("cost/request", lambda s: _usd(_metric(s, "cost_per_request"))),
    ("rated answers", lambda s: str(_samples(s, "negative_feedback_share"))),
    ("negative feedback", lambda s: _pct(_metric(s, "negative_feedback_share"))),
    ("downstream errors", lambda s: _pct(_metric(s, "downstream_error_rate"))),
)


def render_status(status: dict[str, Any]) -> str:
    lines = []
    phase = status.get("phase", "?")
    weight = status.get("weight", 0)
    if phase == "static":
        return f"no rollout configured; canary weight {weight:g}%"
    stage = status.get("stage") or {}
    head = f"phase {phase}   weight {weight:g}%"
    if stage:
        head += f"   stage {stage.get('number')}/{stage.get('of')}"
    lines.append(head)
    if phase == "progressing" and stage:
        hold, elapsed = stage.get("hold") or 0, stage.get("elapsed") or 0
        left = stage.get("hold_left")
        lines.append(
            f"hold {progress_bar(elapsed, hold)} {format_duration(elapsed)} of {format_duration(hold)}"
            + (f", {format_duration(left)} left" if left else "")
            + f"   canary requests {stage.get('requests', 0)}/{stage.get('min_requests', 0)}"
        )
    if status.get("explain"):
        lines.append(status["explain"])
    versions = status.get("versions") or {}
    if versions:
        window = status.get("window")
        lines.append("")
        title = f"last {format_duration(window)}" if window else "metrics"
        lines.append(f"{title:<18}{'stable':>14}{'canary':>14}")
        for label, cell in VERSION_ROWS:
            lines.append(f"{label:<18}{cell(versions.get('stable', {})):>14}{cell(versions.get('canary', {})):>14}")
    verdicts = list(status.get("rules") or []) + list(status.get("judge_verdicts") or [])
    if verdicts:
        lines.append("")
        lines.append("rules")
        for v in verdicts:
            lines.append(f"  {v['source']:<22} {v['status']:<13} {v['reason']}")
    return "\n".join(lines)
