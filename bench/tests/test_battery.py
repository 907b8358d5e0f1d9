"""bench/battery.py: which modes a command line selects, with what sizes; and the table."""

from __future__ import annotations

import pytest

from battery import format_table, parse_args
from battery_common import Row, slope_mb_per_10min


def test_each_flag_selects_its_mode_and_all_selects_every_one_in_order() -> None:
    assert parse_args(["--soak", "--kill9"]).selected == ["soak", "kill9"]
    assert parse_args(["--slow-reader"]).selected == ["slow_reader"]
    assert parse_args(["--all"]).selected == ["soak", "streams", "slowloris", "sigterm", "kill9", "slow_reader"]


@pytest.mark.parametrize("argv", [[], ["--quick"], ["--soak", "--kill9-count", "0"], ["--soak", "--rate", "-1"],
                                  ["--soak", "--sse-share", "1.5"]])
def test_no_mode_or_a_bad_size_is_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2


def test_slope_is_in_mb_per_ten_minutes() -> None:
    assert slope_mb_per_10min([(0.0, 60.0), (300.0, 61.0), (600.0, 62.0)]) == pytest.approx(2.0)
    assert slope_mb_per_10min([(0.0, 60.0)]) == 0.0


def test_the_table_has_one_line_per_row_with_its_verdict() -> None:
    table = format_table([Row("soak", "30 min", "9 requests", "flat", True),
                          Row("kill9", "x 100", "99/100", "one lost", False)])
    lines = table.splitlines()
    assert len(lines) == 3 and "held" in lines[1] and "FAILED" in lines[2]
