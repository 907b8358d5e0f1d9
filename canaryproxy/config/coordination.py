"""The `coordination` section: how many canaryproxy processes share one rollout.

`local` (the default) is one process, today's product, needing nothing. `redis` makes every
process with the same `url` and `rollout` one rollout: state, lease, outcomes and history in
Redis, every key under the rollout's name, so several rollouts can share one Redis.
"""

from __future__ import annotations

import os
import socket
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from canaryproxy.config.fields import Duration, Strict


def default_replica_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class CoordinationConfig(Strict):
    backend: Literal["local", "redis"] = "local"
    url: str | None = None  # redis://[:password@]host:port/db or rediss:// (TLS); ${ENV} allowed
    rollout: str = Field(default="default", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    replica: str | None = None  # this process's name in the status view; default host:pid
    lease: Duration = Field(default=5.0, ge=0.5, le=300)  # a dead leader is replaced within ~2 leases
    grace: Duration = Field(default=30.0, ge=0, le=3600)  # Redis away this long: canary to 0
    publish_every: Duration = Field(default=0.1, gt=0, le=5)  # outcome batches sent this often
    buffer: int = Field(default=200_000, ge=1000, le=10_000_000)  # outcomes kept while Redis is away
    timeout: Duration = Field(default=2.0, gt=0, le=60)  # per Redis command

    @field_validator("url")
    @classmethod
    def _redis_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix") or (parts.scheme != "unix" and not parts.hostname):
            raise ValueError(f"expected redis://host:port/db, rediss://… or unix://…, got {url!r}")
        return url

    @model_validator(mode="after")
    def _redis_needs_a_url(self) -> CoordinationConfig:
        if self.backend == "redis" and not self.url:
            raise ValueError("backend redis needs coordination.url (for example redis://127.0.0.1:6379/0)")
        if self.backend == "local" and self.url:
            raise ValueError("coordination.url is set but backend is local: set backend: redis to use it")
        return self

    @property
    def shared(self) -> bool:
        return self.backend == "redis"

    @property
    def replica_name(self) -> str:
        return self.replica or default_replica_name()
