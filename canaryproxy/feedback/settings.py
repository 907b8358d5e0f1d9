"""What the feedback endpoint and the token signer are told (built from `feedback:` in config)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from canaryproxy.feedback.names import DEFAULT_NAMES, Declared

DEFAULT_PATH = "/canaryproxy/v1/feedback"
DEFAULT_HEADER = "Canaryproxy-Feedback-Token"


@dataclass(frozen=True, slots=True)
class FeedbackSettings:
    keys: tuple[bytes, ...]  # sign with the first, accept any
    path: str = DEFAULT_PATH
    header: str = DEFAULT_HEADER
    max_age: float = 86400.0  # seconds after routing
    request_ids: int = 100_000  # entries of the X-Request-Id cache; 0: no request-id route
    idempotency: int = 100_000  # (request id, name) pairs remembered in one process
    names: Mapping[str, Declared] = field(default_factory=lambda: {d.name: d for d in DEFAULT_NAMES})
    max_comment: int = 2000  # characters
    max_body: int = 16 * 1024  # bytes
    allow_origins: frozenset[str] = frozenset()  # CORS; empty: none
    rate: float = 20.0  # posts per second per client address
    burst: int = 40
    rate_clients: int = 10_000  # client addresses whose buckets are remembered

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("feedback needs at least one key")
