"""The attribution token: round trip, refusal of anything altered, key rotation."""

import base64
import hashlib
import hashlib

import pytest

from canaryproxy.core.types import Role
from canaryproxy.feedback.token import TAG_BYTES, BadToken, Signer, _KeyedMac

KEY, OTHER = b"k" * 32, b"o" * 40
RID = "0123456789abcdef0123456789abcdef"


def test_round_trip_carries_the_attribution():
    signer = Signer((KEY,))
    token = signer.sign(Role.CANARY, RID, 12.34, 1_700_000_000.123, 2**64 - 1)
    assert len(token) == 99 and token.isascii() and "=" not in token and "+" not in token and "/" not in token
    attribution = signer.verify(token)
    assert (attribution.role, attribution.request_id, attribution.weight, attribution.key_hash) == (
        Role.CANARY, RID, 12.34, 2**64 - 1)
    assert attribution.routed_at == pytest.approx(1_700_000_000.123, abs=0.001)
    assert signer.verify(signer.sign(Role.STABLE, "r", 0.0, 1.0, None)).key_hash is None


@pytest.mark.parametrize("key", [KEY, b"x" * 64, b"y" * 65, b"z" * 200])
def test_the_keyed_mac_is_keyed_blake2b(key):
    for message in (b"", b"a", b"m" * 1000):
        short = key if len(key) <= 64 else hashlib.blake2b(key).digest()
        assert _KeyedMac(key).tag(message) == hashlib.blake2b(message, key=short, digest_size=TAG_BYTES).digest()


def test_every_altered_byte_is_refused():
    signer = Signer((KEY,))
    raw = bytearray(base64.urlsafe_b64decode(signer.sign(Role.STABLE, RID, 50, 1.7e9, 7) + "=="))
    for i in range(len(raw)):
        altered = bytearray(raw)
        altered[i] ^= 0x01
        with pytest.raises(BadToken):
            signer.verify(base64.urlsafe_b64encode(bytes(altered)).rstrip(b"=").decode())


def test_a_token_with_a_forged_role_under_the_same_key_id_is_refused():
    signer = Signer((KEY,))
    raw = bytearray(base64.urlsafe_b64decode(signer.sign(Role.STABLE, RID, 50, 1.7e9, 7) + "=="))
    raw[5] = 1  # stable -> canary, tag unchanged
    with pytest.raises(BadToken, match="altered or forged"):
        signer.verify(base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode())


@pytest.mark.parametrize("token", ["", "!!!", "a" * 500, "é" * 10, "AAAA", base64.urlsafe_b64encode(b"\x02" + b"\0" * 60).decode()])
def test_garbage_is_refused(token):
    with pytest.raises(BadToken):
        Signer((KEY,)).verify(token)


def test_another_key_is_refused_and_a_rotated_key_still_verifies():
    old = Signer((OTHER,)).sign(Role.CANARY, RID, 10, 1.7e9, None)
    with pytest.raises(BadToken, match="key this proxy does not hold"):
        Signer((KEY,)).verify(old)
    rotated = Signer((KEY, OTHER))  # the new key signs, the old one still verifies
    assert rotated.verify(old).request_id == RID
    assert rotated.sign(Role.CANARY, RID, 10, 1.7e9, None) == Signer((KEY,)).sign(Role.CANARY, RID, 10, 1.7e9, None)
    assert hashlib.sha256(b"canaryproxy feedback key id\0" + KEY).digest()[:4] in base64.urlsafe_b64decode(
        rotated.sign(Role.CANARY, RID, 10, 1.7e9, None) + "==")[:5]
