"""What the shadow's pairs show at a glance: how often the two answers agree, and how the canary's
amounts compare with stable's on the same requests (ratios of sums over the pairs that have both).

The judge's paired tests decide; this only describes, for the status view and the dashboard.
"""

from __future__ import annotations

from canaryproxy.core.types import Observed, ShadowPair

# The amounts compared, and how each is read of one answer.
_AMOUNTS = ("latency", "ttft", "prompt_tokens", "completion_tokens", "output_chars")


# The finish reasons of an answer cut off by the token limit (OpenAI's, Anthropic's).
_CUT_BY_LENGTH = frozenset({"length", "max_tokens"})


def _amount(name: str, o: Observed) -> float | None:
    value = getattr(o, name)
    return None if value is None else float(value)


class PairTally:
    __slots__ = ("pairs", "texts_compared", "same_text", "overlap_sum", "canary_failed_only",
                 "stable_failed_only", "schema_compared", "canary_schema_only", "stable_schema_only",
                 "finish_compared", "same_finish", "canary_cut_by_length_only", "stable_cut_by_length_only", "_sums")

    def __init__(self) -> None:
        self.pairs = 0
        self.texts_compared = 0
        self.same_text = 0
        self.overlap_sum = 0.0
        self.canary_failed_only = 0  # pairs in which the canary's answer failed and stable's did not
        self.stable_failed_only = 0
        self.schema_compared = 0
        self.canary_schema_only = 0  # the canary's output broke its schema and stable's did not
        self.stable_schema_only = 0
        self.finish_compared = 0  # pairs in which both answers had a finish reason
        self.same_finish = 0
        self.canary_cut_by_length_only = 0  # the canary's answer hit the token limit, stable's did not
        self.stable_cut_by_length_only = 0
        self._sums = {name: [0.0, 0.0, 0] for name in _AMOUNTS}  # stable's, canary's, pairs

    def take(self, pair: ShadowPair) -> None:
        stable, canary = pair.stable, pair.shadow
        self.pairs += 1
        if pair.same_text is not None:
            self.texts_compared += 1
            self.same_text += pair.same_text
            self.overlap_sum += pair.text_overlap or 0.0
        if stable.failed != canary.failed:
            if canary.failed:
                self.canary_failed_only += 1
            else:
                self.stable_failed_only += 1
        if stable.schema_ok is not None and canary.schema_ok is not None:
            self.schema_compared += 1
            self.canary_schema_only += stable.schema_ok and not canary.schema_ok
            self.stable_schema_only += canary.schema_ok and not stable.schema_ok
        self._take_finish(*pair.finish_reasons)
        if stable.failed or canary.failed:
            return
        for name, sums in self._sums.items():
            a, b = _amount(name, stable), _amount(name, canary)
            if a is not None and b is not None:
                sums[0] += a
                sums[1] += b
                sums[2] += 1

    def _take_finish(self, stable: str | None, canary: str | None) -> None:
        if stable is None or canary is None:
            return
        self.finish_compared += 1
        self.same_finish += stable == canary
        self.canary_cut_by_length_only += canary in _CUT_BY_LENGTH and stable not in _CUT_BY_LENGTH
        self.stable_cut_by_length_only += stable in _CUT_BY_LENGTH and canary not in _CUT_BY_LENGTH

    def summary(self) -> dict[str, object]:
        compared = self.texts_compared
        ratios = {name: (round(b / a, 4) if a > 0 else None, n) for name, (a, b, n) in self._sums.items()}
        return {
            "pairs": self.pairs,
            "texts_compared": compared,
            "same_text_rate": self.same_text / compared if compared else None,
            "mean_text_overlap": self.overlap_sum / compared if compared else None,
            "failed": {"canary_only": self.canary_failed_only, "stable_only": self.stable_failed_only},
            "finish_reason": {"compared": self.finish_compared,
                              "same_rate": self.same_finish / self.finish_compared if self.finish_compared else None,
                              "canary_cut_by_length_only": self.canary_cut_by_length_only,
                              "stable_cut_by_length_only": self.stable_cut_by_length_only},
            "schema": {"compared": self.schema_compared, "canary_only": self.canary_schema_only,
                       "stable_only": self.stable_schema_only},
            # canary ÷ stable, summed over the pairs in which both answered and both have the amount
            "ratios": {name: {"canary_over_stable": ratio, "pairs": n} for name, (ratio, n) in ratios.items()},
        }
