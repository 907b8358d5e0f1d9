"""The feedback token: a response's attribution, signed, so any replica with the keys can trust it
when a client quotes it back — no table, no lookup.

The token is URL-safe base64 (no padding) of fixed little-endian fields, then the request id,
then a tag:

    version   1 byte   1
    key id    4 bytes  the first 4 bytes of SHA-256("canaryproxy feedback key id" NUL key)
    role      1 byte   0 stable, 1 canary
    flags     1 byte   bit 0: a sticky key hash follows
    weight    2 bytes  the canary weight at routing, in 0.01 % steps
    routed_at 8 bytes  wall-clock milliseconds at routing
    key hash  8 bytes  the sticky key's 64-bit hash (0 when none)
    id length 1 byte   then the request id's bytes (printable ASCII, <= 128)
    tag      16 bytes  keyed BLAKE2b-128(key, everything before)

99 characters for a 32-hex request id. The key id names the key that signed it, so a verifier
computes one MAC (not one per configured key) and an operator can tell a rotated-out key from a
forgery; it reveals nothing of the key. The tag is compared in constant time (`hmac.compare_digest`).
Signing is on the path of every proxied response: one `struct.pack`, one MAC and one base64
encoding. The MAC is keyed BLAKE2b (`_KeyedMac`), keyed once per key and copied per token; tests
check it against `hashlib.blake2b(message, key=key)`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from dataclasses import dataclass

from canaryproxy.core.types import Role

VERSION = 1
TAG_BYTES = 16
_HEAD = struct.Struct("<B4sBBHQQB")
_HAS_KEY = 1
_ROLES = (Role.STABLE, Role.CANARY)
_ROLE_CODE = {Role.STABLE: 0, Role.CANARY: 1}
_MIN_BYTES = _HEAD.size + TAG_BYTES
_MAX_BYTES = _MIN_BYTES + 255
_MAX_CHARS = (_MAX_BYTES * 4 + 2) // 3


class _KeyedMac:
    """Keyed BLAKE2b with a 128-bit tag (RFC 7693's keyed mode, a MAC in itself: no HMAC
    construction needed), keyed once per key and copied per token. A third of HMAC-SHA256's cost
    on this path (bench/README.md, "Feedback"). BLAKE2b takes keys up to 64 bytes; a longer one is
    hashed to 64 bytes first, as HMAC does with keys longer than its block."""

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes) -> None:
        if len(key) > hashlib.blake2b.MAX_KEY_SIZE:
            key = hashlib.blake2b(key).digest()
        self._keyed = hashlib.blake2b(key=key, digest_size=TAG_BYTES)

    def tag(self, message: bytes) -> bytes:
        keyed = self._keyed.copy()
        keyed.update(message)
        return keyed.digest()


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"canaryproxy feedback key id\0" + key).digest()[:4]


@dataclass(frozen=True, slots=True)
class Attribution:
    """What the proxy knew of a request when it routed it: what feedback is judged by."""

    role: Role
    request_id: str
    routed_at: float  # wall-clock seconds (millisecond precision in a token)
    weight: float  # canary weight in percent
    key_hash: int | None


class BadToken(Exception):
    """Not a token these keys signed (forged, altered, truncated, or from another key)."""


class Signer:
    """Signs with the first key, verifies with any of them (rotation: add the new key first, keep
    the old one until the tokens it signed are older than max_age, then remove it)."""

    __slots__ = ("_mac", "_kid", "_keys")

    def __init__(self, keys: tuple[bytes, ...]) -> None:
        if not keys:
            raise ValueError("a signer needs at least one key")
        self._kid = key_id(keys[0])
        self._keys = {key_id(k): _KeyedMac(k) for k in keys}
        self._mac = self._keys[self._kid]

    def sign(self, role: Role, request_id: str, weight: float, routed_at: float, key_hash: int | None) -> str:
        rid = request_id.encode("ascii")
        message = _HEAD.pack(
            VERSION, self._kid, _ROLE_CODE[role], _HAS_KEY if key_hash is not None else 0,
            round(weight * 100), int(routed_at * 1000), key_hash or 0, len(rid),
        ) + rid
        return base64.urlsafe_b64encode(message + self._mac.tag(message)).rstrip(b"=").decode("ascii")

    def verify(self, token: str) -> Attribution:
        """The attribution a token carries; BadToken (with why) when these keys did not sign it."""
        if not 0 < len(token) <= _MAX_CHARS or not token.isascii():
            raise BadToken("the token is not one this proxy issued (wrong length or characters)")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise BadToken("the token is not one this proxy issued (not URL-safe base64)") from None
        if len(raw) < _MIN_BYTES:
            raise BadToken("the token is not one this proxy issued (too short)")
        version, kid, role, flags, weight, routed_ms, key_hash, rid_length = _HEAD.unpack_from(raw)
        if version != VERSION:
            raise BadToken(f"the token has version {version}; this proxy reads version {VERSION}")
        prepared = self._keys.get(kid)
        if prepared is None:
            raise BadToken("the token was signed with a key this proxy does not hold (rotated out, "
                           "or another deployment's)")
        message, tag = raw[:-TAG_BYTES], raw[-TAG_BYTES:]
        if not hmac.compare_digest(prepared.tag(message), tag):
            raise BadToken("the token's signature does not match: it was altered or forged")
        if len(message) != _HEAD.size + rid_length or role >= len(_ROLES):
            raise BadToken("the token is malformed")  # signed by us, so only a bug gets here
        request_id = message[_HEAD.size:].decode("ascii")
        return Attribution(_ROLES[role], request_id, routed_ms / 1000, weight / 100,
                           key_hash if flags & _HAS_KEY else None)
