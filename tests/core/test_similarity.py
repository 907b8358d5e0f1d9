"""How alike two answers are: normalised equality and word-set overlap, in bounded time."""

from __future__ import annotations

import time

from hypothesis import given, strategies as st

from canaryproxy.core.similarity import MAX_CHARS, compare, overlap


def test_equal_after_normalisation_is_the_same_text():
    assert compare("The answer  is\n42.", "the answer is 42.") == (True, 1.0)
    assert compare("", "") == (True, 1.0)


def test_overlap_is_the_jaccard_index_of_the_word_sets():
    same, shared = compare("the answer is 42", "the answer is forty-two")
    assert not same
    assert shared == 3 / 6  # {the, answer, is} of {the, answer, is, 42, forty, two}
    assert overlap("Bonjour le monde", "hello world") == 0.0


@given(st.text(max_size=200), st.text(max_size=200))
def test_overlap_is_symmetric_and_within_zero_and_one(a, b):
    assert 0.0 <= overlap(a, b) <= 1.0
    assert overlap(a, b) == overlap(b, a)
    assert compare(a, a)[0] and overlap(a, a) == 1.0


def test_long_answers_cost_a_bounded_time():
    huge = "word " * 2_000_000  # 10 MB
    started = time.perf_counter()
    compare(huge, huge + "tail")
    assert time.perf_counter() - started < 0.5  # only the first MAX_CHARS characters are read
    assert len(huge) > 100 * MAX_CHARS
