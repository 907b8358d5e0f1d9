"""Declared feedback names: what type each value has and which values are a bad verdict.

A name is declared in config (`feedback.names`) with one of four types; the endpoint reads the
posted value through it. JSON types are taken strictly, as a schema would: a boolean is `true` or
`false` (not 0/1, not "true"), an integer is not `true` (Python's bool is an int) nor `4.0`, a
number is finite. A value that does not fit is refused with a sentence saying what would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from canaryproxy.core.types import FeedbackKind

Value = bool | int | float | str


class BadValue(ValueError):
    """The value does not fit its declaration; the message says what would."""


@dataclass(frozen=True, slots=True)
class BooleanName:
    """`true`/`false`; `negative` is the value that is a bad verdict."""

    name: str
    negative: bool
    kind: FeedbackKind = FeedbackKind.FEEDBACK

    def read(self, value: object) -> tuple[Value, bool]:
        if not isinstance(value, bool):
            raise BadValue(f"{self.name} takes true or false, got {_shown(value)}")
        return value, value is self.negative


@dataclass(frozen=True, slots=True)
class RangeName:
    """An integer (or, with `integer` False, any finite number) within [minimum, maximum];
    negative below `negative_below` or above `negative_above`."""

    name: str
    integer: bool
    minimum: float | None = None
    maximum: float | None = None
    negative_below: float | None = None
    negative_above: float | None = None
    kind: FeedbackKind = FeedbackKind.FEEDBACK

    def read(self, value: object) -> tuple[Value, bool]:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                self.integer and not isinstance(value, int)):
            wanted = "an integer" if self.integer else "a number"
            raise BadValue(f"{self.name} takes {wanted}{self._range()}, got {_shown(value)}")
        if not math.isfinite(value):
            raise BadValue(f"{self.name} takes a finite number, got {value!r}")
        if (self.minimum is not None and value < self.minimum) or (
                self.maximum is not None and value > self.maximum):
            raise BadValue(f"{self.name} must be{self._range()}, got {value!r}")
        negative = (self.negative_below is not None and value < self.negative_below) or (
            self.negative_above is not None and value > self.negative_above)
        return value, negative

    def _range(self) -> str:
        low, high = _number(self.minimum), _number(self.maximum)
        if low is not None and high is not None:
            return f" from {low} to {high}"
        if low is not None:
            return f" of at least {low}"
        if high is not None:
            return f" of at most {high}"
        return ""


@dataclass(frozen=True, slots=True)
class CategoryName:
    """One of `values`; those in `negative` are a bad verdict."""

    name: str
    values: frozenset[str]
    negative: frozenset[str]
    kind: FeedbackKind = FeedbackKind.FEEDBACK

    def read(self, value: object) -> tuple[Value, bool]:
        if not isinstance(value, str) or value not in self.values:
            listed = ", ".join(sorted(self.values))
            raise BadValue(f"{self.name} takes one of {listed}, got {_shown(value)}")
        return value, value in self.negative


Declared = BooleanName | RangeName | CategoryName

# When `feedback.names` is not given: a user's thumbs up/down, and a downstream failure report.
DEFAULT_NAMES: tuple[Declared, ...] = (
    BooleanName("thumbs", negative=False),
    BooleanName("downstream_error", negative=True, kind=FeedbackKind.DOWNSTREAM_ERROR),
)


def _number(value: float | None) -> str | None:
    if value is None:
        return None
    return str(int(value)) if float(value).is_integer() else repr(value)


def _shown(value: object) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
