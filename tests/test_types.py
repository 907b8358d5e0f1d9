"""The pure core type-checks under `mypy --strict` (design.md, habit 9): part of the test command."""

from __future__ import annotations

from pathlib import Path

from mypy import api

CORE = Path(__file__).resolve().parent.parent / "canaryproxy" / "core"


def test_the_core_passes_mypy_strict(tmp_path):
    out, err, status = api.run(["--strict", "--cache-dir", str(tmp_path / "mypy"), str(CORE)])
    assert status == 0, out + err
