"""The compact record of one finished request that crosses processes, and its binary form.

A process publishes what it observed so that one leader's windows and judge see the traffic of
every process (backends/ carries the bytes). What travels is exactly what the tally declarations
and the judge read (`Observed`'s fields): no request id, path or body. Per request rather than
per second, because the judge needs requests: its blocks count the canary's share request by
request and its per-key caps must meet every request of a key, whichever process served it.

The binary form is fixed-size little-endian fields, then the guardrail sources as one
NUL-separated UTF-8 string (bounded names, usually none): 66 bytes for a request without a
guardrail intervention. None is -1 for counts and NaN for times and cost. `encode(decode(b)) == b`.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from canaryproxy.core.types import ErrorKind, Observed, Role, ShadowPair

_ROLES = tuple(Role)
_ROLE_CODE = {role: i for i, role in enumerate(_ROLES)}
_ERRORS = (None, *ErrorKind)
_ERROR_CODE = {error: i for i, error in enumerate(_ERRORS)}

# role, error, flags, status, weight in 0.01% steps, key hash, routed_at, latency, ttft,
# prompt tokens, completion tokens, the proxy's estimate of completion tokens, output chars, cost,
# length of the guardrail string
_FORMAT = struct.Struct("<BBHHHQdddiiiidH")
_NAN = math.nan

_HAS_KEY, _TRUNCATED, _USAGE_MISSING, _SCHEMA_CHECKED, _SCHEMA_OK, _SCHEMA_SKIPPED = (1 << i for i in range(6))
_INSPECT_ERROR = 1 << 6


@dataclass(frozen=True, slots=True, eq=True)
class Observation(Observed):
    """A finished request as another process saw it: reads like the `Outcome` it came from."""

    role: Role
    routed_at: float
    weight: float
    key_hash: int | None
    status: int
    latency: float
    error: ErrorKind | None
    truncated: bool
    ttft: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    usage_missing: bool
    estimated_tokens: int | None
    output_chars: int | None
    schema_ok: bool | None
    schema_skipped: bool
    guardrails: tuple[str, ...]
    cost_usd: float | None
    inspect_error: bool

    @property
    def finished_at(self) -> float:
        return self.routed_at + self.latency


def encode(o: Observed) -> bytes:
    """The binary form of what `o` says (an `Outcome` or an `Observation`)."""
    flags = (
        (_HAS_KEY if o.key_hash is not None else 0)
        | (_TRUNCATED if o.truncated else 0)
        | (_USAGE_MISSING if o.usage_missing else 0)
        | (_SCHEMA_CHECKED if o.schema_ok is not None else 0)
        | (_SCHEMA_OK if o.schema_ok else 0)
        | (_SCHEMA_SKIPPED if o.schema_skipped else 0)
        | (_INSPECT_ERROR if o.inspect_error else 0)
    )
    guardrails = "\0".join(o.guardrails).encode() if o.guardrails else b""
    head = _FORMAT.pack(
        _ROLE_CODE[o.role], _ERROR_CODE[o.error], flags, o.status, round(o.weight * 100),
        o.key_hash or 0, o.routed_at, o.latency, _NAN if o.ttft is None else o.ttft,
        _count(o.prompt_tokens), _count(o.completion_tokens), _count(o.estimated_tokens), _count(o.output_chars),
        _NAN if o.cost_usd is None else o.cost_usd, len(guardrails),
    )
    return head + guardrails if guardrails else head


def decode(data: bytes | memoryview, offset: int = 0) -> tuple[Observation, int]:
    """The observation at `offset` and the offset after it. ValueError for bytes that are not one."""
    try:
        (role, error, flags, status, weight, key_hash, routed_at, latency, ttft, prompt, completion,
         estimated, chars, cost, guardrails_length) = _FORMAT.unpack_from(data, offset)
        end = offset + _FORMAT.size + guardrails_length
        if end > len(data):
            raise struct.error("the guardrail sources are cut short")
        guardrails = bytes(data[offset + _FORMAT.size:end]).decode().split("\0") if guardrails_length else []
        observation = Observation(
            role=_ROLES[role], routed_at=routed_at, weight=weight / 100, error=_ERRORS[error],
            key_hash=key_hash if flags & _HAS_KEY else None, status=status, latency=latency,
            truncated=bool(flags & _TRUNCATED), ttft=None if math.isnan(ttft) else ttft,
            prompt_tokens=_none_if_negative(prompt), completion_tokens=_none_if_negative(completion),
            usage_missing=bool(flags & _USAGE_MISSING), estimated_tokens=_none_if_negative(estimated),
            output_chars=_none_if_negative(chars),
            schema_ok=bool(flags & _SCHEMA_OK) if flags & _SCHEMA_CHECKED else None,
            schema_skipped=bool(flags & _SCHEMA_SKIPPED), guardrails=tuple(guardrails),
            cost_usd=None if math.isnan(cost) else cost, inspect_error=bool(flags & _INSPECT_ERROR),
        )
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise ValueError(f"not an encoded observation at offset {offset}: {exc}") from None
    return observation, end


def decode_all(data: bytes | memoryview) -> list[Observation]:
    """Every observation of a batch (observations encoded back to back)."""
    observations, offset = [], 0
    while offset < len(data):
        observation, offset = decode(data, offset)
        observations.append(observation)
    return observations


# A shadow pair: whether the texts were the same (-1: not compared), their overlap (NaN: not
# compared), the lengths of the two finish reasons (255: none; at most 64 bytes each), then the
# finish reasons, stable's observation and the shadow's, back to back.
_PAIR = struct.Struct("<bdBB")
_NO_REASON = 255
_MAX_REASON = 64


def _reason_bytes(reason: str | None) -> bytes | None:
    return None if reason is None else reason.encode()[:_MAX_REASON]


def encode_pair(pair: ShadowPair) -> bytes:
    same = -1 if pair.same_text is None else int(pair.same_text)
    overlap = _NAN if pair.text_overlap is None else pair.text_overlap
    reasons = [_reason_bytes(r) for r in pair.finish_reasons]
    lengths = [_NO_REASON if r is None else len(r) for r in reasons]
    return (_PAIR.pack(same, overlap, *lengths) + b"".join(r for r in reasons if r)
            + encode(pair.stable) + encode(pair.shadow))


def decode_pairs(data: bytes | memoryview) -> list[ShadowPair]:
    """Every pair of a batch (pairs encoded back to back). ValueError for bytes that are not."""
    pairs, offset = [], 0
    while offset < len(data):
        try:
            same, overlap, *lengths = _PAIR.unpack_from(data, offset)
            offset += _PAIR.size
            reasons: list[str | None] = []
            for length in lengths:
                if length == _NO_REASON:
                    reasons.append(None)
                    continue
                if offset + length > len(data):
                    raise struct.error("a finish reason is cut short")
                reasons.append(bytes(data[offset:offset + length]).decode(errors="replace"))
                offset += length
        except struct.error as exc:
            raise ValueError(f"not an encoded shadow pair at offset {offset}: {exc}") from None
        stable, offset = decode(data, offset)
        shadow, offset = decode(data, offset)
        pairs.append(ShadowPair(stable, shadow, same_text=None if same < 0 else bool(same),
                                text_overlap=None if math.isnan(overlap) else overlap, key_hash=stable.key_hash,
                                finish_reasons=(reasons[0], reasons[1])))
    return pairs


def _count(value: int | None) -> int:
    if value is None:
        return -1
    return min(value, 2**31 - 1)


def _none_if_negative(value: int) -> int | None:
    return None if value < 0 else value
