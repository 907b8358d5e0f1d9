"""How alike two answers to the same request are, in bounded time.

* `same` — equal after normalisation (case folded, runs of whitespace as one space, trimmed): what
  a deterministic model at temperature 0 gives twice, and what a rewrite of a prompt template
  changes at once.
* `overlap` — the Jaccard index of the two answers' word sets (|A ∩ B| / |A ∪ B|; words are what
  whitespace and ASCII punctuation separate, after case folding), 1.0 for two empty answers, and
  1.0 without counting when the two are the same text. Chosen over an edit distance (quadratic) and
  over embeddings (a model call per pair): one pass over each text, no dependency, and it moves
  with what a release changes wholesale — another language, a refusal instead of an answer, a
  different format — while two paraphrases of the same answer still share most of their words.
  It says nothing about word order or meaning; that is what the paired tests on the inspected
  quantities are for.

Texts longer than `MAX_CHARS` are compared on their first `MAX_CHARS` characters, so one pair
costs at most a few hundred microseconds whatever the models write.
"""

from __future__ import annotations

import string

MAX_CHARS = 32_768
# Punctuation to spaces, then a split: a third of the cost of a `\w+` regex per answer.
_SEPARATORS = str.maketrans(string.punctuation, " " * len(string.punctuation))


def normalise(text: str) -> str:
    return " ".join(text[:MAX_CHARS].casefold().split())


def words(text: str) -> set[str]:
    return set(text[:MAX_CHARS].casefold().translate(_SEPARATORS).split())


def overlap(a: str, b: str) -> float:
    words_a, words_b = words(a), words(b)
    union = len(words_a | words_b)
    return 1.0 if union == 0 else len(words_a & words_b) / union


def compare(a: str, b: str) -> tuple[bool, float]:
    """(same after normalisation, word-set overlap in [0, 1])."""
    if normalise(a) == normalise(b):
        return True, 1.0
    return False, overlap(a, b)
