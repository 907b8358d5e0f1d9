"""The compact per-request record: what crosses processes reads exactly like the Outcome it was."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, strategies as st

from canaryproxy.core.observation import Observation, decode, decode_all, encode
from canaryproxy.core.tally import Tally
from canaryproxy.core.types import ErrorKind, Outcome, Role

observed_outcomes = st.builds(
    Outcome,
    role=st.sampled_from(Role),
    started=st.just(0.0),
    routed_at=st.floats(min_value=0.0, max_value=4e9),
    weight=st.integers(min_value=0, max_value=10_000).map(lambda b: b / 100),
    key_hash=st.none() | st.integers(min_value=0, max_value=2**64 - 1),
    status=st.integers(min_value=0, max_value=599),
    latency=st.floats(min_value=0.0, max_value=1e5),
    error=st.none() | st.sampled_from(ErrorKind),
    truncated=st.booleans(),
    ttft=st.none() | st.floats(min_value=0.0, max_value=1e4),
    prompt_tokens=st.none() | st.integers(min_value=0, max_value=10**7),
    completion_tokens=st.none() | st.integers(min_value=0, max_value=10**7),
    usage_missing=st.booleans(),
    estimated_tokens=st.none() | st.integers(min_value=0, max_value=10**7),
    output_chars=st.none() | st.integers(min_value=0, max_value=10**8),
    schema_ok=st.none() | st.booleans(),
    schema_skipped=st.booleans(),
    guardrails=st.lists(st.sampled_from(["moderation", "pii", "content_filter", "rüle_ü"]), max_size=3).map(tuple),
    cost_usd=st.none() | st.floats(min_value=0.0, max_value=100.0),
    inspect_error=st.booleans(),
)

FIELDS = ("role", "routed_at", "weight", "key_hash", "status", "latency", "error", "truncated", "ttft",
          "prompt_tokens", "completion_tokens", "usage_missing", "estimated_tokens", "output_chars", "schema_ok",
          "schema_skipped", "guardrails", "cost_usd", "inspect_error")


@given(st.lists(observed_outcomes, min_size=1, max_size=20))
def test_a_batch_decodes_to_what_was_encoded_and_counts_the_same(batch):
    data = b"".join(encode(o) for o in batch)
    decoded = decode_all(data)
    for outcome, observation in zip(batch, decoded, strict=True):
        for name in FIELDS:
            assert getattr(observation, name) == getattr(outcome, name), name
        assert (observation.failed, observation.counts_for_version, observation.status_class) == (
            outcome.failed, outcome.counts_for_version, outcome.status_class)
        assert encode(observation) == encode(outcome)
    from_outcomes, from_observations = Tally(), Tally()
    for outcome, observation in zip(batch, decoded):
        from_outcomes.record(outcome)
        from_observations.record(observation)
    assert from_outcomes.counts == from_observations.counts
    assert from_outcomes.labelled == from_observations.labelled


def test_a_request_without_guardrails_is_66_bytes():
    assert len(encode(Outcome(role=Role.STABLE, started=0.0))) == 66


@pytest.mark.parametrize("data", [b"", b"\x00" * 10, encode(Outcome(role=Role.CANARY, started=0.0,
                                                                   guardrails=("pii",)))[:-1]])
def test_bytes_that_are_not_an_observation_are_a_precise_error(data):
    with pytest.raises(ValueError, match="not an encoded observation at offset 0"):
        decode(data)


def test_nan_never_leaks_out_of_a_decoded_observation():
    observation, end = decode(encode(Outcome(role=Role.CANARY, started=0.0)))
    assert isinstance(observation, Observation) and end == 66
    assert observation.ttft is None and observation.cost_usd is None
    assert not any(isinstance(v, float) and math.isnan(v) for v in (observation.routed_at, observation.latency))


reasons = st.none() | st.sampled_from(["stop", "length", "tool_calls", "content_filter", "end_turn", "ü"])


@given(st.lists(st.tuples(observed_outcomes, observed_outcomes, st.none() | st.booleans(),
                          st.none() | st.floats(min_value=0.0, max_value=1.0), st.tuples(reasons, reasons)),
                min_size=1, max_size=10))
def test_shadow_pairs_decode_to_what_was_encoded(pairs):
    from canaryproxy.core.observation import decode_pairs, encode_pair
    from canaryproxy.core.types import ShadowPair

    batch = [ShadowPair(a, b, same_text=same, text_overlap=overlap, key_hash=a.key_hash, finish_reasons=finish)
             for a, b, same, overlap, finish in pairs]
    decoded = decode_pairs(b"".join(encode_pair(p) for p in batch))
    for pair, back in zip(batch, decoded, strict=True):
        assert (back.same_text, back.text_overlap, back.key_hash, back.finish_reasons) == (
            pair.same_text, pair.text_overlap, pair.key_hash, pair.finish_reasons)
        assert encode(back.stable) == encode(pair.stable) and encode(back.shadow) == encode(pair.shadow)


def test_bytes_that_are_not_pairs_are_a_precise_error():
    from canaryproxy.core.observation import decode_pairs

    with pytest.raises(ValueError, match="not an encoded"):
        decode_pairs(b"\x01\x02\x03")
