"""The detection benchmark runs the product's decision path end to end, and its oracle is sane."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent


def test_a_short_detection_run_catches_half_failing_and_keeps_a_healthy_canary(tmp_path: Path) -> None:
    out = tmp_path / "detection.json"
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "detection.py"), "--runs", "3", "--scenarios", "errors 50%,A/A",
         "--horizon", "120", "--jobs", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "| errors 50% | judge | 3 |" in done.stdout
    summaries = {(s["scenario"], s["method"]): s for s in json.loads(out.read_text())["summaries"]}
    bad = summaries["errors 50%", "judge"]
    assert bad["rolled_back"] == 3 and bad["sources"] == {"judge:errors": 3}
    assert 0 < bad["requests_median"] <= 40  # the goal is 20; three runs are noisy
    assert summaries["A/A", "judge"]["rolled_back"] == 0
    assert summaries["A/A", "thresholds"]["rolled_back"] == 0


def test_the_oracle_needs_fewer_requests_for_a_bigger_regression() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "detection_oracle.py"), "--runs", "200"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    medians = {}
    for line in done.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("x"):
            medians[cells[0], cells[1]] = int(cells[2].split()[0].replace(",", ""))
    assert set(medians) == {("x2", "0.006"), ("x2", "0.01"), ("x3", "0.006"), ("x3", "0.01")}
    assert medians["x3", "0.006"] < medians["x2", "0.006"] / 2
    assert medians["x2", "0.01"] < medians["x2", "0.006"] * 1.1  # a larger α never costs more


def test_help_names_every_scenario() -> None:
    # Scenario names contain "%" ("errors 50%"), which argparse's help formatting would choke on.
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "detection.py"), "--help"], capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "errors 50%" in " ".join(done.stdout.split())


def test_feedback_scenarios_run_the_judge_on_late_feedback(tmp_path: Path) -> None:
    out = tmp_path / "feedback.json"
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "detection.py"), "--runs", "2", "--scenarios", "feedback x3,A/A (feedback)",
         "--methods", "judge", "--horizon", "900", "--jobs", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    summaries = {s["scenario"]: s for s in json.loads(out.read_text())["summaries"]}
    assert summaries["feedback x3"]["rolled_back"] == 2
    assert summaries["feedback x3"]["sources"] == {"judge:negative_feedback": 2}
    assert summaries["A/A (feedback)"]["rolled_back"] == 0
