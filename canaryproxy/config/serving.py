"""The serving sections: where the proxy and the admin API listen, the upstreams, how requests are
routed between them, timeouts and limits."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from canaryproxy.admin.hosts import parse_authority
from canaryproxy.config.fields import Duration, Listen, Size, Strict, UpstreamUrl
from canaryproxy.core.splitter import check_weight


class AdminConfig(Strict):
    listen: Listen = ("127.0.0.1", 9090)
    token: str | None = Field(default=None, description="bearer token for admin mutations; use ${ENV}")

    # Further names the admin API answers to (Host and Origin), beyond its own address and, on
    # loopback, localhost: `name` (any port) or `name:port`. See admin/hosts.py.
    allowed_hosts: tuple[str, ...] = ()

    @field_validator("allowed_hosts")
    @classmethod
    def _names_not_patterns(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if "*" in name or "/" in name:
                # A pattern would let a rebound DNS name through: the check exists to refuse those.
                raise ValueError(f"list host names as name or name:port, not URLs or patterns, got {name!r}")
            parse_authority(name)
        return tuple(str(parse_authority(name)) for name in names)

    @field_validator("token")
    @classmethod
    def _empty_is_none(cls, token: str | None) -> str | None:
        # `${CANARYPROXY_ADMIN_TOKEN:-}` with the variable unset means "no token".
        return token or None


class UpstreamsConfig(Strict):
    stable: UpstreamUrl
    canary: UpstreamUrl
    # Idle pooled connections are closed after this; keep it below the upstreams' own idle timeout
    # (uvicorn, and so vLLM, closes after 5 s), or requests race their close.
    keepalive: Duration = Field(default=4.0, gt=0)


_STICKY = re.compile(r"(header|cookie|query):([!#$%&'*+.^_`|~0-9A-Za-z-]+)|client-ip")


class RoutingConfig(Strict):
    weight: float = Field(default=0.0, ge=0.0, le=100.0)
    sticky: tuple[str, ...] = ("header:x-user-id", "cookie:session", "client-ip")
    override_header: str | None = None
    served_by_header: str | None = "x-canary-version"

    _one_bucket_resolution = field_validator("weight")(check_weight)

    @field_validator("sticky")
    @classmethod
    def _known_key_sources(cls, sources: tuple[str, ...]) -> tuple[str, ...]:
        for source in sources:
            if not _STICKY.fullmatch(source):
                raise ValueError(
                    f"unknown sticky key {source!r}: use header:NAME, cookie:NAME, query:NAME or client-ip"
                )
        return sources


class TimeoutsConfig(Strict):
    connect: Duration = Field(default=5.0, gt=0)
    first_byte: Duration = Field(default=300.0, gt=0)
    idle: Duration = Field(default=60.0, gt=0)
    client_body: Duration = Field(default=30.0, gt=0)
    client_header: Duration = Field(default=60.0, gt=0)  # a request head must arrive whole within this
    client_write: Duration = Field(default=60.0, gt=0)
    keepalive: Duration = Field(default=75.0, ge=0)
    drain: Duration = Field(default=30.0, ge=0)


class LimitsConfig(Strict):
    max_request_body: Size = Field(default=32 * 1024**2, ge=0)
    upstream_connections: int = Field(default=1000, ge=1)


