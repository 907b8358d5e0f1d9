"""bench/ablate.py reads its variants as documented, and refuses the ones it cannot run."""

from __future__ import annotations

import pytest

from ab import REPO
from ablate import parse_variant, quartiles


def test_a_name_alone_is_this_checkout_with_the_default_config() -> None:
    side = parse_variant("full")
    assert (side.name, side.tree, side.overrides) == ("full", REPO, {})


def test_a_config_and_a_tree_are_taken_as_given() -> None:
    side = parse_variant(f'nolog@{REPO}={{"access_log": false}}')
    assert (side.name, side.tree, side.overrides) == ("nolog", REPO, {"access_log": False})


@pytest.mark.parametrize(("text", "message"), [
    ("=" + "{}", "a name of letters"),
    ("a/b", "a name of letters"),
    ("bad={", "not JSON"),
    ("list=[1]", "must be a JSON object"),
    ("gone@/nonexistent", "holds no canaryproxy package"),
])
def test_what_cannot_run_is_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_variant(text)


def test_quartiles_of_the_ratios() -> None:
    assert quartiles([1.0, 0.9, 1.1, 0.95]) == (0.95, 0.975, 1.0)
    assert quartiles([5, 1, 4, 2, 3, 8, 7, 6]) == (3, 4.5, 6)
