"""The `feedback` section: the signed attribution token on every proxied response, and the endpoint
where clients (or services downstream) post a verdict on a response. Off by default.

    feedback:
      enabled: true
      keys: ["${CANARYPROXY_FEEDBACK_KEY}"]   # >= 32 bytes each; sign with the first, accept any
      names:
        thumbs: {type: boolean, negative: false}
        rating: {type: integer, min: 1, max: 5, negative_below: 3}
        downstream_error: {type: boolean, negative: true, kind: downstream_error}
        reason: {type: category, values: [wrong, slow, rude, other], negative: [wrong, rude]}

`request_ids.entries` bounds the cache that maps an X-Request-Id to its attribution (for clients
that quote the request id instead of the token): about 200 bytes per entry, so the default
100,000 is ~20 MB (measured with tracemalloc in tests/feedback/test_memory.py). It is FIFO: an
entry is written once, when its response starts, and is worth less as it ages (it expires at
`max_age`), so the oldest goes first; LRU would cost a reordering on every lookup for nothing.
`idempotency.entries` bounds the (request id, name) pairs one process remembers (~180 bytes
each); with `coordination.backend: redis` they are Redis keys instead, shared by every replica.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from canaryproxy.config.fields import Duration, Size, Strict
from canaryproxy.core.types import FeedbackKind
from canaryproxy.feedback.names import DEFAULT_NAMES, BooleanName, CategoryName, Declared, RangeName
from canaryproxy.feedback.settings import DEFAULT_HEADER, DEFAULT_PATH, FeedbackSettings

MIN_KEY_BYTES = 32  # 256 bits: a shorter key would be the weak link of the 128-bit tag's MAC
MAX_NAMES = 32  # each name is a label value in /metrics: bounded

Kind = Literal["feedback", "downstream_error"]


class BooleanConfig(Strict):
    type: Literal["boolean"]
    negative: bool = Field(description="the value that is a bad verdict (false for thumbs)")
    kind: Kind = "feedback"

    def declared(self, name: str) -> Declared:
        return BooleanName(name, self.negative, FeedbackKind(self.kind))


class RangeConfig(Strict):
    type: Literal["integer", "number"]
    min: float | None = None
    max: float | None = None
    negative_below: float | None = None
    negative_above: float | None = None
    kind: Kind = "feedback"

    @model_validator(mode="after")
    def _coherent(self) -> RangeConfig:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        if self.negative_below is None and self.negative_above is None:
            raise ValueError("say which values are negative: negative_below and/or negative_above")
        for bound in (self.negative_below, self.negative_above):
            if bound is not None and ((self.min is not None and bound < self.min)
                                      or (self.max is not None and bound > self.max)):
                raise ValueError(f"negative bound {bound:g} lies outside min..max")
        return self

    def declared(self, name: str) -> Declared:
        return RangeName(name, self.type == "integer", self.min, self.max, self.negative_below,
                         self.negative_above, FeedbackKind(self.kind))


Label = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class CategoryConfig(Strict):
    type: Literal["category"]
    values: list[Label] = Field(min_length=1, max_length=64)
    negative: list[Label] = Field(description="the values that are a bad verdict (may be empty)")
    kind: Kind = "feedback"

    @model_validator(mode="after")
    def _coherent(self) -> CategoryConfig:
        if len(set(self.values)) != len(self.values):
            raise ValueError("values are listed twice")
        unknown = sorted(set(self.negative) - set(self.values))
        if unknown:
            raise ValueError(f"negative names values that are not in values: {', '.join(unknown)}")
        return self

    def declared(self, name: str) -> Declared:
        return CategoryName(name, frozenset(self.values), frozenset(self.negative), FeedbackKind(self.kind))


NameConfig = Annotated[BooleanConfig | RangeConfig | CategoryConfig, Field(discriminator="type")]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class RequestIdsConfig(Strict):
    entries: int = Field(default=100_000, ge=0, le=10_000_000)  # 0: no request-id route


class IdempotencyConfig(Strict):
    entries: int = Field(default=100_000, ge=1000, le=10_000_000)


class CorsConfig(Strict):
    allow_origins: list[Annotated[str, Field(pattern=r"^https?://[^/\s]+$")]] = []


class RateLimitConfig(Strict):
    rate: float = Field(default=20.0, gt=0, le=100_000)  # posts per second per client address
    burst: int = Field(default=40, ge=1, le=1_000_000)
    clients: int = Field(default=10_000, ge=100, le=10_000_000)  # addresses remembered


class FeedbackConfig(Strict):
    enabled: bool = False
    path: str = Field(default=DEFAULT_PATH, pattern=r"^/[A-Za-z0-9/_.~-]*$", max_length=200)
    keys: list[str] = []
    header: str = Field(default=DEFAULT_HEADER, pattern=r"^[A-Za-z0-9-]+$", max_length=100)
    max_age: Duration = Field(default=86400.0, gt=0, le=30 * 86400)
    request_ids: RequestIdsConfig = RequestIdsConfig()
    idempotency: IdempotencyConfig = IdempotencyConfig()
    names: dict[Name, NameConfig] | None = None  # None: thumbs and downstream_error
    max_comment: int = Field(default=2000, ge=0, le=1_000_000)  # characters
    max_body: Size = Field(default=16 * 1024, ge=256, le=1024**2)
    cors: CorsConfig = CorsConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()

    @model_validator(mode="after")
    def _keys_when_enabled(self) -> FeedbackConfig:
        for i, key in enumerate(self.keys):
            size = len(key.encode("utf-8"))
            if size < MIN_KEY_BYTES:
                raise ValueError(f"feedback.keys[{i}] is {size} bytes: a key needs at least {MIN_KEY_BYTES} "
                                 "(for example `openssl rand -base64 32` in ${CANARYPROXY_FEEDBACK_KEY})")
        if len(set(self.keys)) != len(self.keys):
            raise ValueError("feedback.keys lists a key twice")
        if self.enabled and not self.keys:
            raise ValueError("feedback is enabled but feedback.keys is empty: give at least one signing "
                             f"key of {MIN_KEY_BYTES}+ bytes (for example keys: [\"${{CANARYPROXY_FEEDBACK_KEY}}\"])")
        if self.names is not None and not 1 <= len(self.names) <= MAX_NAMES:
            raise ValueError(f"feedback.names declares {len(self.names)} names: give 1 to {MAX_NAMES}")
        return self

    def to_settings(self) -> FeedbackSettings:
        names = ({n: c.declared(n) for n, c in self.names.items()} if self.names is not None
                 else {d.name: d for d in DEFAULT_NAMES})
        return FeedbackSettings(
            keys=tuple(k.encode("utf-8") for k in self.keys), path=self.path, header=self.header,
            max_age=self.max_age, request_ids=self.request_ids.entries, idempotency=self.idempotency.entries,
            names=names, max_comment=self.max_comment, max_body=self.max_body,
            allow_origins=frozenset(self.cors.allow_origins), rate=self.rate_limit.rate,
            burst=self.rate_limit.burst, rate_clients=self.rate_limit.clients,
        )
