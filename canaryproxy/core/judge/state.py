"""Reading a saved judge state back: each field checked, with a precise message when it is not
what the config expects.

A state is what `Judge.state()` wrote, possibly through JSON (so tuples come back as lists and
floats as floats; ints stay ints). `where` names the field as a path, "events.errors.log_l", so
that a corrupt state says which part is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from canaryproxy.core.types import Status, Verdict


def fail(where: str, problem: str) -> ValueError:
    return ValueError(f"judge state does not fit: {where}: {problem}")


def mapping(value: object, where: str, keys: Sequence[str] | None = None) -> Mapping[str, object]:
    """`value` as a mapping; with `keys`, exactly those keys (in any order)."""
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise fail(where, f"expected an object, got {type(value).__name__}")
    if keys is not None and set(value) != set(keys):
        missing, unknown = sorted(set(keys) - set(value)), sorted(set(value) - set(keys))
        parts = [f"missing {', '.join(missing)}"] if missing else []
        parts += [f"unknown {', '.join(unknown)}"] if unknown else []
        raise fail(where, "; ".join(parts))
    return value


def sequence(value: object, where: str, length: int | None = None) -> Sequence[object]:
    if not isinstance(value, (list, tuple)):
        raise fail(where, f"expected a list, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise fail(where, f"expected {length} values, got {len(value)}")
    return value


def number(value: object, where: str, finite: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(where, f"expected a number, got {type(value).__name__}")
    if finite and not math.isfinite(value):
        raise fail(where, f"expected a finite number, got {value!r}")
    return float(value)


def optional_number(value: object, where: str) -> float | None:
    return None if value is None else number(value, where)


def count(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise fail(where, f"expected a count (an integer >= 0), got {value!r}")
    return value


def counts(value: object, where: str, length: int) -> list[int]:
    return [count(item, f"{where}[{i}]") for i, item in enumerate(sequence(value, where, length))]


def side_counts(value: object, where: str, upper: float, what: str) -> dict[float, list[int]]:
    """A saved table of [key, stable count, canary count] rows, each key a new number in (0, upper)
    (a canary share, a weight): what the event tests keep per share and the feedback tests per
    weight."""
    table: dict[float, list[int]] = {}
    for i, entry in enumerate(sequence(value, where)):
        at = f"{where}[{i}]"
        key, stable, canary = sequence(entry, at, 3)
        key_value = number(key, f"{at}[0]")
        if not 0.0 < key_value < upper or key_value in table:
            raise fail(f"{at}[0]", f"expected a new {what} in (0, {upper:g}), got {key!r}")
        table[key_value] = [count(stable, f"{at}[1]"), count(canary, f"{at}[2]")]
    return table


def flag(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise fail(where, f"expected true or false, got {value!r}")
    return value


def verdict_state(verdict: Verdict | None) -> dict[str, object] | None:
    """A verdict as plain data: enough to rebuild it exactly (`verdict_from`)."""
    if verdict is None:
        return None
    return {
        "source": verdict.source,
        "status": str(verdict.status),
        "reason": verdict.reason,
        "also_on_stable": verdict.also_on_stable,
        "details": plain(verdict.details),
    }


def plain(value: object) -> object:
    """A copy of nested dicts and lists, so a saved state shares nothing with the live judge."""
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def verdict_from(value: object, where: str) -> Verdict | None:
    if value is None:
        return None
    fields = mapping(value, where, ("source", "status", "reason", "also_on_stable", "details"))
    source, status, reason = fields["source"], fields["status"], fields["reason"]
    if not isinstance(source, str) or not isinstance(reason, str):
        raise fail(where, "source and reason must be strings")
    if status not in set(Status):
        raise fail(f"{where}.status", f"expected one of {', '.join(Status)}, got {status!r}")
    return Verdict(
        source=source,
        status=Status(str(status)),
        reason=reason,
        also_on_stable=flag(fields["also_on_stable"], f"{where}.also_on_stable"),
        details=dict(mapping(plain(fields["details"]), f"{where}.details")),
    )
