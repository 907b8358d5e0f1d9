"""The demo's screen: the live view (`Frame`, `Screen`) and the outcome it ends with."""

from __future__ import annotations

import re
import shutil
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from canaryproxy.core.units import format_duration
from canaryproxy.sim.scenarios import CANARY

if TYPE_CHECKING:
    from canaryproxy.sim.demo import DemoRun
from canaryproxy.sim.status_view import progress_bar, render_status

if TYPE_CHECKING:
    pass



# --- drawing --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """What the screen shows at one moment: the demo's own lines around `render_status`."""

    run: DemoRun
    status: dict[str, Any]

    def lines(self) -> list[str]:
        """The full-screen view, without the outcome (the screen wraps that one, never cuts it)."""
        run = self.run
        header = [
            f"canaryproxy demo, scenario {run.scenario.name}: {run.scenario.story}",
            f"elapsed {run.elapsed():.1f}s   {run.traffic.rate:g} req/s to {run.proxy_url}: "
            f"{run.traffic.sent} sent, {run.traffic.failed} without a complete answer"
            + (f", {run.traffic.skipped} not sent (this machine cannot keep up: try a lower --rate)"
               if run.traffic.skipped else ""),
            self._regression_line(),
            *self._served_line(),
            "",
            "stages  " + "  ".join(self._stage_cells()),
        ]
        # Judge tests that pass are counted, not listed: the view must fit a terminal.
        judged = self.status.get("judge_verdicts") or []
        unwell = [v for v in judged if v["status"] != "pass"]
        status = {**self.status, "judge_verdicts": unwell}
        shadow = status.get("shadow")
        if shadow is not None and not shadow.get("in_stage"):
            status["shadow"] = {**shadow, "tests": None}  # its tests' table had its time on screen
        lines = header + render_status(status).split("\n")
        if judged:
            lines.append(f"  judge: {len(judged) - len(unwell)} of {len(judged)} tests pass")
        return lines

    def line(self) -> str:
        """One line for logs and CI."""
        status = self.status
        stage = status.get("stage") or {}
        in_shadow = bool(stage.get("shadow")) and status.get("shadow") is not None  # or rolled back in it
        share = f" shadow {stage['shadow']:g}%" if in_shadow and status["phase"] == "progressing" else ""
        cells = [f"[{self.run.elapsed():5.1f}s] {status['phase']} stage {stage.get('number')}/"
                 f"{stage.get('of')} weight {status['weight']:g}%{share}"]
        # In a shadow stage the canary serves nobody: its answers are the shadow's pairs.
        roles = ("stable",) if in_shadow else ("stable", "canary")
        for role in roles:
            metrics = ((status.get("versions") or {}).get(role) or {}).get("metrics") or {}
            cells.append(role + " " + " ".join(
                f"{label} {show(metrics.get(name, {}).get('value'))}" for label, name, show in _LINE_METRICS))
        if in_shadow:
            cells.append(_shadow_cell(status["shadow"]))
        verdicts = list(status.get("rules") or []) + list(status.get("judge_verdicts") or [])
        unwell = [f"{v['source']} {v['status']}" for v in verdicts if v["status"] != "pass"]
        cells.append("checks: " + (", ".join(unwell) if unwell else f"all {len(verdicts)} pass"))
        return " | ".join(cells)

    def _regression_line(self) -> str:
        run = self.run
        if not run.scenario.regression:
            return "regression: none, the canary stays like stable"
        change = ", ".join(f"{name} {_setting(name, getattr(CANARY, name))} -> {_setting(name, value)}"
                           for name, value in run.scenario.regression.items())
        if run.scenario.regression_from_start:
            return f"regression from the start, for the shadow stage to catch: {change}"
        if run.regression_at is None:
            return f"regression when stage 2 begins: {change}"
        return f"regression started at {run.regression_at:.1f}s: {change}"

    def _served_line(self) -> list[str]:
        """How many users the canary served (the served-by header): 0 while in the shadow."""
        if not self.run.scenario.shadow:
            return []
        served = self.run.traffic.served_by
        return [f"answers served by the canary: {served.get('canary', 0)} of {sum(served.values())}"]

    def _stage_cells(self) -> list[str]:
        status = self.status
        stage = status.get("stage") or {}
        current = (stage.get("number") or 1) - 1
        phase = status["phase"]
        cells = []
        for index, planned in enumerate(status.get("plan") or []):
            if index == current and phase in ("rolled_back", "paused"):
                bar = "[" + phase.replace("_", " ").center(10) + "]"
            else:
                done = 1.0 if index < current or phase == "promoted" else 0.0
                if index == current and phase == "progressing":
                    done = (stage.get("elapsed") or 0) / planned["hold"] if planned["hold"] else 1.0
                bar = progress_bar(done, 1.0, width=10)
            share = f"shadow {planned['shadow']:g}%" if planned.get("shadow") else f"{planned['weight']:g}%"
            cells.append(f"{share} {bar}")
        return cells + ["then 100%" + (" [promoted]" if phase == "promoted" else "")]


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}ms"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


_LINE_METRICS = (
    ("req/s", "request_rate", _count),
    ("err", "error_rate", _ratio),
    ("p95", "latency_p95", _ms),
    ("ttft95", "ttft_p95", _ms),
    ("tok", "tokens_per_request", _count),
    ("guard", "guardrail_rate", _ratio),
    ("schema", "schema_failure_rate", _ratio),
    ("thumbs-down", "negative_feedback_share", _ratio),
)


def _shadow_cell(shadow: dict[str, Any]) -> str:
    pairs = shadow.get("pairs") or {}
    ratios = pairs.get("ratios") or {}

    def times(name: str) -> str:
        ratio = (ratios.get(name) or {}).get("canary_over_stable")
        return "-" if ratio is None else f"{ratio:.2f}x"

    overloaded = ((shadow.get("this_process") or {}).get("dropped") or {}).get("overloaded", 0)
    return (f"shadow pairs {pairs.get('pairs', 0)} same-text {_ratio(pairs.get('same_text_rate'))} "
            f"canary/stable tok {times('completion_tokens')} lat {times('latency')} "
            f"no-worse {'yes' if shadow.get('no_worse') else 'no'}"
            + (f" (copies paused, proxy overloaded: {overloaded})" if overloaded else ""))


def _setting(name: str, value: object) -> str:
    if name in ("latency", "ttft") and isinstance(value, float):
        return format_duration(value)
    if name.endswith("_rate") and isinstance(value, float):
        return f"{value * 100:g}%"
    return f"{value:g}" if isinstance(value, float) else str(value)


def outcome_lines(run: DemoRun) -> list[str]:
    """How the rollout ended and why, where to look, and (with --keep-running) what goes on."""
    result = run.result
    assert result is not None
    if result.outcome == "promoted":
        head = f"PROMOTED after {result.elapsed:.1f}s: the canary takes all traffic"
    elif result.outcome == "rolled_back":
        head = f"ROLLED BACK after {result.elapsed:.1f}s"
        stage = ((result.decision or {}).get("before") or {}).get("stage", 0) - 1
        if 0 <= stage < len(run.controller.plan.stages) and run.controller.plan.stages[stage].is_shadow:
            head += ", in the shadow stage"
        elif result.regression_at is not None:
            head += f", {result.elapsed - result.regression_at:.1f}s after the regression started"
    elif result.outcome == "paused":
        head = f"PAUSED after {result.elapsed:.1f}s: the rollout waits for an operator"
    else:
        head = f"STOPPED after {result.elapsed:.1f}s, before the rollout ended"
    url = result.admin_url
    lines = [head, f"  why: {result.reason}"]
    if run.scenario.shadow:
        lines.append(f"  answers served by the canary: {result.served_by_canary} of {result.answers}")
    lines.append(f"  admin: {url} (status {url}admin/status, decisions {url}admin/decisions)")
    if run.keep_running and result.outcome != "interrupted":
        lines.append(f"  still running: traffic through {run.proxy_url} goes on until Ctrl-C")
    return lines


# --- the terminal -----------------------------------------------------------------------------------

_COLORS = {"promoted": "32", "pass": "32", "rolled_back": "31", "rolled back": "31", "fail": "31",
           "paused": "33", "pending": "33", "progressing": "36", "inconclusive": "90",
           "PROMOTED": "1;32", "ROLLED BACK": "1;31", "PAUSED": "1;33", "STOPPED": "1;33"}
_COLORED_WORDS = re.compile(r"\b(" + "|".join(sorted(_COLORS, key=len, reverse=True)) + r")\b")


class Screen:
    """Where frames go: a full-screen redraw (ANSI) twice a second, or a plain line per second."""

    def __init__(self, out: TextIO, *, plain: bool, color: bool) -> None:
        self.out = out
        self.plain = plain
        self.color = color and not plain
        self.interval = 1.0 if plain else 0.5
        self._drawn = False
        self._outcome_shown = False

    def show(self, frame: Frame) -> None:
        result = frame.run.result
        if self.plain:
            text = frame.line() + "\n"
            if result is not None and not self._outcome_shown:
                text += "\n".join(outcome_lines(frame.run)) + "\n"
                self._outcome_shown = True
        else:
            width, height = shutil.get_terminal_size((120, 50))
            lines = [line[:width] for line in frame.lines()]
            if result is not None:
                lines.append("")
                for line in outcome_lines(frame.run):
                    lines += textwrap.wrap(line, width, subsequent_indent="       ") or [""]
            lines = [self._paint(line) for line in lines[-(height - 1):]]
            # Home, each line cleared to its end, everything below cleared: no flicker, no scrolling.
            start = "\x1b[?25l\x1b[2J\x1b[H" if not self._drawn else "\x1b[H"
            text = start + "\x1b[K\n".join(lines) + "\x1b[K\n\x1b[J"
        self.out.write(text)
        self.out.flush()
        self._drawn = True

    def _paint(self, line: str) -> str:
        if not self.color:
            return line
        return _COLORED_WORDS.sub(lambda m: f"\x1b[{_COLORS[m.group(1)]}m{m.group(1)}\x1b[0m", line)

    def close(self) -> None:
        if not self.plain and self._drawn:
            self.out.write("\x1b[?25h")  # the cursor, hidden while drawing
            self.out.flush()
