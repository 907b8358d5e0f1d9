"""The detection benchmark runs the product's decision path end to end, and its oracle is sane."""

from __future__ import annotations

import json
import math
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


def test_the_shadow_stage_runs_beside_the_live_judge_on_the_same_scenarios(tmp_path: Path) -> None:
    out = tmp_path / "shadow.json"
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "detection.py"), "--runs", "2", "--scenarios", "errors 50%,A/A",
         "--methods", "judge,shadow", "--horizon", "120", "--jobs", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "| errors 50% | shadow | 2 |" in done.stdout
    side_by_side = [line for line in done.stdout.splitlines() if line.startswith("| errors 50% | 2, ")]
    assert len(side_by_side) == 1 and side_by_side[0].count("|") == 9  # 8 columns
    assert "pairs to detection, median (p90)" in done.stdout
    summaries = {(s["scenario"], s["method"]): s for s in json.loads(out.read_text())["summaries"]}
    bad = summaries["errors 50%", "shadow"]
    assert bad["rolled_back"] == 2 and bad["sources"] == {"judge:shadow_failed": 2}
    assert 0 < bad["requests_median"] <= 60
    assert summaries["A/A", "shadow"]["rolled_back"] == 0
    runs = [r for r in json.loads(out.read_text())["runs"] if r["method"] == "shadow"]
    assert all(r["canary_requests"] > 0 for r in runs)  # the canary answered copies, served no user


def test_the_shadow_method_refuses_the_staged_plan() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "detection.py"), "--methods", "shadow", "--plan", "staged"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2 and "fixed plan only" in done.stderr


def test_each_answer_of_a_pair_has_the_live_rates_and_the_two_share_the_request() -> None:
    import random
    import statistics

    import detection as live
    import detection_shadow as shadow

    rng = random.Random(7)
    population = live.Population(rng)
    stable = live._profile(live.Behaviour(0.01))
    canary = live._profile(live.Behaviour(0.02, tokens_scale=1.5))
    traffic = shadow._Traffic([], [], schema_checked=False, shared_events=0.3)
    for second in range(400):
        users = rng.choices(population.ids, cum_weights=population.cumulative, k=100)
        shadow._start_second(rng, population, users, float(second), 0.0, lambda key: True, stable, canary,
                             traffic, second * 100, every_request=True)
    pairs = [pair for _, _, pair in traffic.pairs_due]
    assert len(pairs) == len(traffic.in_flight) == 40_000
    failed = [sum(getattr(p, side).failed for p in pairs) / len(pairs) for side in ("stable", "shadow")]
    assert 0.008 < failed[0] < 0.012 and 0.017 < failed[1] < 0.023
    both = sum(p.stable.failed and p.shadow.failed for p in pairs) / len(pairs)
    assert 0.002 < both < 0.004  # 30% of stable's 1%: the prompt's doing
    log_latency = [math.log(p.stable.latency) for p in pairs]
    assert abs(statistics.median(log_latency) - math.log(live.LATENCY_MEDIAN)) < 0.01
    assert abs(statistics.pstdev(log_latency) - live.LATENCY_SIGMA) < 0.01
    ok = [p for p in pairs if not (p.stable.failed or p.shadow.failed)]
    assert all(round(p.stable.prompt_tokens * 1.5) in range(p.shadow.prompt_tokens - 1, p.shadow.prompt_tokens + 2)
               for p in ok[:1000])  # the same prompt, scaled
    ratios = [math.log(p.shadow.completion_tokens / p.stable.completion_tokens) for p in ok]
    assert abs(statistics.mean(ratios) - math.log(1.5)) < 0.02
    assert abs(statistics.pstdev(ratios) - shadow.COMPLETION_OWN_SIGMA * math.sqrt(2)) < 0.02
