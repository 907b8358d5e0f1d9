import random

from hypothesis import given, strategies as st

from canaryproxy.core.splitter import BUCKETS, Splitter, key_hash, weight_to_buckets
from canaryproxy.core.types import Role

KEYS = [f"user-{i}" for i in range(100_000)]
HASHES = [key_hash(k) for k in KEYS]


def canary_share(splitter: Splitter, hashes) -> float:
    return sum(splitter.choose(h) is Role.CANARY for h in hashes) / len(hashes)


def test_100k_keys_at_weight_10_land_within_0_3_percent():
    assert abs(canary_share(Splitter(10), HASHES) - 0.10) <= 0.003


def test_raising_the_weight_keeps_every_canary_key_on_the_canary():
    splitter = Splitter(5)
    on_canary = {h for h in HASHES if splitter.choose(h) is Role.CANARY}
    splitter.set_weight(25)
    assert all(splitter.choose(h) is Role.CANARY for h in on_canary)
    assert abs(canary_share(splitter, HASHES) - 0.25) <= 0.003


@given(st.lists(st.integers(0, BUCKETS), min_size=2, max_size=6), st.integers(0, 2**64 - 1))
def test_monotone_for_any_increasing_weights(buckets, hash64):
    weights = sorted(b / 100 for b in buckets)
    splitter = Splitter()
    seen_canary = False
    for weight in weights:
        splitter.set_weight(weight)
        on_canary = splitter.choose(hash64) is Role.CANARY
        assert on_canary or not seen_canary, "a key went back from canary to stable as weight grew"
        seen_canary = on_canary


def test_weight_0_sends_everyone_to_stable_and_100_everyone_to_canary():
    assert canary_share(Splitter(0), HASHES[:10_000]) == 0.0
    assert canary_share(Splitter(100), HASHES[:10_000]) == 1.0
    assert Splitter(0).choose(None) is Role.STABLE
    assert Splitter(100).choose(None) is Role.CANARY


def test_requests_without_a_key_split_at_random_with_the_same_probability():
    splitter = Splitter(10, rng=random.Random(7))
    share = sum(splitter.choose(None) is Role.CANARY for _ in range(100_000)) / 100_000
    assert abs(share - 0.10) <= 0.003


def test_hash_is_stable_across_processes():
    # Pinned: a user must land in the same bucket on every replica and after every restart.
    assert key_hash("user-42") == 0x6FA0CA4D7BE6EFA6


def test_weight_resolution_is_one_bucket():
    assert weight_to_buckets(0.01) == 1
    assert weight_to_buckets(12.34) == 1234
    splitter = Splitter(0.5)
    assert splitter.weight == 0.5


def test_weight_out_of_range_is_refused():
    import pytest

    for bad in (-0.01, 100.01):
        with pytest.raises(ValueError, match="0-100"):
            Splitter(bad)


def test_the_shadow_sample_is_by_key_and_nests_the_canary_buckets():
    from canaryproxy.core.splitter import Splitter, key_hash

    splitter = Splitter(0.0)
    assert not splitter.shadowed(key_hash("u"))  # no shadow stage: nothing copied
    splitter.set_shadow(20)
    hashes = [key_hash(f"user-{i}") for i in range(20_000)]
    sampled = {h for h in hashes if splitter.shadowed(h)}
    assert abs(len(sampled) / len(hashes) - 0.20) < 0.01
    assert all(splitter.shadowed(h) for h in sampled)  # a user's requests: all compared or none
    splitter.set_weight(5)  # the users the canary serves first were all compared in the shadow
    assert {h for h in hashes if splitter.choose(h) is Role.CANARY} <= sampled
    assert splitter.shadow == 20.0
