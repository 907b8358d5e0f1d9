"""The inspection reaches the Outcome in one place, and gives the Outcome the old path gave.

`inspection_outcomes_c70616e.json` was recorded at commit c70616e, where the inspectors wrote the
Outcome themselves and the forwarder added `truncated` when the upstream failed mid-body: every
fixture case, for both roles, read to its end, cut short by the transport (`finish(False)` and the
forwarder's `truncated = True`), and left by the client halfway (no `finish`). Only the fields
that differ from a fresh Outcome are stored.

Since then one thing changed on purpose: the proxy's own count of completion tokens
(`estimated_tokens`, estimate.py), which is also the completion count of a response without
usage. Those two are checked against each other here and against known counts in
test_token_estimates.py; everything else is as recorded.
"""

from __future__ import annotations

import ast
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from inspect_support import FIRST_TOKEN_AT, STARTED, as_dict, fixture, split_at
from multidict import CIMultiDict
from test_inspect_fixtures import CASES, SSE, event_ends

from canaryproxy.core.types import Outcome, Role
from canaryproxy.inspection import Inspection, apply, inspector_for, read_request

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = json.loads((ROOT / "tests" / "fixtures" / "inspection_outcomes_c70616e.json").read_text())
BY_NAME = {case.name: case for case in CASES}
MODES = {"complete", "cut_short", "client_left"}


def pieces_of(case: Any) -> list[bytes]:
    data = fixture(case.fixture)
    if case.content_type == SSE:
        return split_at(data, event_ends(data))
    return [data]


def new_path(case: Any, role: Role, mode: str) -> Outcome:
    """The data plane's way now: feed, finish (or not), then apply once."""
    _, facts = read_request(case.path, json.dumps(case.request).encode(), case.settings)
    inspection = Inspection()
    inspector = inspector_for(facts, case.status, case.content_type, CIMultiDict({}), inspection, case.settings,
                              role=role, started=STARTED, now=lambda: FIRST_TOKEN_AT)
    pieces = pieces_of(case)
    if mode == "client_left":
        pieces = pieces[: max(1, len(pieces) // 2)] if len(pieces) > 1 else [pieces[0][: len(pieces[0]) // 2]]
    for piece in pieces:
        inspector.feed(piece)
    if mode != "client_left":
        inspector.finish(mode == "complete")
    outcome = Outcome(role=role, started=STARTED)
    apply(outcome, inspection, cut_short=mode == "cut_short")
    return outcome


def test_the_recording_covers_every_case_role_and_way() -> None:
    seen = {(record["case"], record["role"], record["mode"]) for record in GOLDEN}
    assert seen == {(case.name, role.value, mode) for case in CASES for role in (Role.CANARY, Role.STABLE)
                    for mode in MODES}


@pytest.mark.parametrize("record", GOLDEN, ids=lambda r: f"{r['case']}/{r['role']}/{r['mode']}")
def test_the_applied_outcome_is_the_one_the_old_path_wrote(record: dict[str, Any]) -> None:
    role = Role(record["role"])
    expected = as_dict(Outcome(role=role, started=STARTED))
    expected.update({name: tuple(value) if isinstance(value, list) else value
                     for name, value in record["outcome"].items()})
    got = as_dict(new_path(BY_NAME[record["case"]], role, record["mode"]))
    estimated = got.pop("estimated_tokens")
    expected.pop("estimated_tokens")
    if got["usage_missing"] and got["completion_tokens"] is not None:
        assert got["completion_tokens"] == estimated
        got["completion_tokens"] = expected["completion_tokens"]
    assert got == expected


@pytest.mark.parametrize("cut_short", [False, True])
@pytest.mark.parametrize("ended_early", [False, True, None], ids=["ended", "ended-early", "not-inspected"])
def test_truncated_is_the_transport_or_the_protocol(cut_short: bool, ended_early: bool | None) -> None:
    outcome = Outcome(role=Role.STABLE, started=0.0)
    inspection = None
    if ended_early is not None:
        inspection = Inspection()
        inspection.ended_early = ended_early
    apply(outcome, inspection, cut_short)
    assert outcome.truncated is (cut_short or bool(ended_early))


def test_a_fresh_inspection_applies_the_outcome_defaults() -> None:
    outcome = Outcome(role=Role.CANARY, started=1.0)
    apply(outcome, Inspection(), cut_short=False)
    assert as_dict(outcome) == as_dict(Outcome(role=Role.CANARY, started=1.0))


def test_every_inspection_field_is_an_outcome_field() -> None:
    outcome_fields = {field.name for field in fields(Outcome)}
    # ended_early decides `truncated`; the text stays with the inspection (a shadow pair reads it)
    # and never rides an Outcome to the windows, the exporter or another process.
    assert set(Inspection.__slots__) - outcome_fields == {"ended_early", "text"}


# --- one writer ----------------------------------------------------------------------------------

INSPECTED_FIELDS = (set(Inspection.__slots__) - {"ended_early", "text"}) | {"truncated"}
PACKAGES = [ROOT / "canaryproxy" / "inspection", ROOT / "canaryproxy" / "proxy"]


def attribute_writes(path: Path) -> list[tuple[str, str, int]]:
    """(object name, attribute, line) of every attribute assigned in the module."""
    writes = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in targets:
            for part in ast.walk(target):
                if isinstance(part, ast.Attribute) and isinstance(part.value, ast.Name):
                    writes.append((part.value.id, part.attr, part.lineno))
    return writes


def test_only_apply_writes_what_the_inspection_found_into_an_outcome() -> None:
    problems = []
    for package in PACKAGES:
        for path in sorted(package.glob("*.py")):
            if path.name == "result.py" and package.name == "inspection":
                continue
            for name, attribute, line in attribute_writes(path):
                if name == "outcome" and attribute in INSPECTED_FIELDS:
                    problems.append(f"{path.relative_to(ROOT)}:{line} writes outcome.{attribute}")
                if attribute == "truncated":
                    problems.append(f"{path.relative_to(ROOT)}:{line} writes {name}.truncated")
    assert not problems, "\n".join(problems)


def test_inspectors_do_not_know_the_outcome() -> None:
    importers = []
    for path in sorted((ROOT / "canaryproxy" / "inspection").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and any(alias.name == "Outcome" for alias in node.names):
                importers.append(path.name)
    assert importers == ["result.py"]
