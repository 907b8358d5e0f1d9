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
    # A shadow stage serves no user with the canary: what it does is copy a share of the requests.
    in_shadow = bool(stage.get("shadow")) and phase == "progressing"
    head = f"phase {phase}   " + (f"shadow {stage['shadow']:g}% (weight {weight:g}%)" if in_shadow
                                  else f"weight {weight:g}%")
    if stage:
        head += f"   stage {stage.get('number')}/{stage.get('of')}"
    lines.append(head)
    if phase == "progressing" and stage:
        hold, elapsed = stage.get("hold") or 0, stage.get("elapsed") or 0
        left = stage.get("hold_left")
        counted = "pairs compared" if in_shadow else "canary requests"
        lines.append(
            f"hold {progress_bar(elapsed, hold)} {format_duration(elapsed)} of {format_duration(hold)}"
            + (f", {format_duration(left)} left" if left else "")
            + f"   {counted} {stage.get('requests', 0)}/{stage.get('min_requests', 0)}"
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
    shadow = status.get("shadow")
    if shadow:
        lines.append("")
        lines += shadow_lines(shadow, stage.get("shadow") or _planned_share(status), status.get("window"))
    verdicts = list(status.get("rules") or []) + list(status.get("judge_verdicts") or [])
    if shadow:  # the paired tests are in the shadow section's table
        verdicts = [v for v in verdicts if not v["source"].startswith(SHADOW_VERDICTS) or v["status"] != "pass"]
    if verdicts:
        lines.append("")
        lines.append("rules")
        for v in verdicts:
            lines.append(f"  {v['source']:<22} {v['status']:<13} {v['reason']}")
    return "\n".join(lines)


# --- the shadow stage ---------------------------------------------------------------------------------

SHADOW_VERDICTS = "judge:shadow_"
# What the pairs' canary ÷ stable ratios are called on screen.
RATIO_LABELS = (("completion_tokens", "tokens"), ("output_chars", "output length"), ("latency", "latency"),
                ("ttft", "ttft"))


def _planned_share(status: dict[str, Any]) -> float:
    """The plan's shadow share (its first shadow stage), for a view outside the shadow stage."""
    return next((s["shadow"] for s in status.get("plan") or [] if s.get("shadow")), 0.0)


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def shadow_lines(shadow: dict[str, Any], planned: float, window: float | None = None) -> list[str]:
    """The shadow section: what was copied, how alike the answers are, the paired tests' counts."""
    pairs = shadow.get("pairs") or {}
    share = shadow.get("share") or 0
    if shadow.get("in_stage") and share:
        head = f"shadow: copying {share:g}% of the requests to the canary; users get stable's answers"
    else:
        head = f"shadow: the shadow stage copied {planned:g}% of the requests to the canary; not copying now"
    lines = [head, f"  pairs compared {pairs.get('pairs', 0)}" + _this_process(shadow.get("this_process"))]
    lines.append(f"  same text {_pct1(pairs.get('same_text_rate'))} of {pairs.get('texts_compared') or 0}"
                 f" compared, mean word overlap {_pct1(pairs.get('mean_text_overlap'))}")
    ratios = pairs.get("ratios") or {}
    cells = [f"{label} {_times((ratios.get(name) or {}).get('canary_over_stable'))}" for name, label in RATIO_LABELS]
    lines.append("  canary/stable: " + ", ".join(cells))
    lines += _shadow_window(shadow.get("window"), window)
    failed, schema = pairs.get("failed") or {}, pairs.get("schema") or {}
    lines.append(f"  failed only: canary {failed.get('canary_only', 0)}, stable {failed.get('stable_only', 0)}"
                 f"   schema broken only: canary {schema.get('canary_only', 0)}, stable "
                 f"{schema.get('stable_only', 0)} (of {schema.get('compared', 0)})")
    lines += _paired_tests(shadow.get("tests"))
    negligible = shadow.get("negligible") or 0
    lines.append(f"  no worse: {'yes' if shadow.get('no_worse') else 'no'}   (each test: odds bound ≤ "
                 f"{shadow.get('tolerance', 0):g}x, or canary worse in ≤ {negligible * 100:g}% more pairs)")
    return lines


def _shadow_window(summary: dict[str, Any] | None, window: float | None) -> list[str]:
    """The canary's compared answers as a window of their own: what the shadow costs, apart."""
    if not summary:
        return []
    over = f" in the last {format_duration(window)}" if window else ""
    return [f"  shadow answers{over}: {summary.get('requests', 0)}, latency p95 "
            f"{_ms(_metric(summary, 'latency_p95'))}, {_num(_metric(summary, 'output_tokens_per_request'), 0)} output tokens "
            f"each, cost {_usd(summary.get('cost_usd'))} in all"]


def _pct1(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.1f}%"


def _this_process(local: dict[str, Any] | None) -> str:
    if not local:
        return ""
    dropped = {reason: n for reason, n in (local.get("dropped") or {}).items() if n}
    drops = ", ".join(f"{reason} {n}" for reason, n in dropped.items()) if dropped else "none"
    copying = local.get("share_in_force")
    now = "" if copying is None else f"copying {copying:g}%, "
    return (f"; this process: {now}{local.get('sent', 0)} sent, {local.get('in_flight', 0)} in flight"
            f" (max {local.get('max_in_flight', 0)}), dropped {drops}")


def _paired_tests(tests: dict[str, Any] | None) -> list[str]:
    if not tests or not tests.get("tests"):
        return []
    lines = [f"  {'paired test':<19}{'canary worse':>14}{'stable worse':>14}{'compared':>10}  {'status':<8}odds bound"]
    for name, test in tests["tests"].items():
        evidence = test.get("evidence") or {}
        bound = test.get("odds_upper_bound")
        lines.append(f"  {name:<19}{evidence.get('canary_worse', 0):>14}{evidence.get('stable_worse', 0):>14}"
                     f"{evidence.get('compared', 0):>10}  {test.get('status', '?'):<8}"
                     + ("-" if bound is None else f"{bound:.2f}x"))
    return lines
