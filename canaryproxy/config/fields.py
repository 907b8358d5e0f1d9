"""The value types every section shares: durations, sizes, listen addresses, upstream URLs, and the
strict base model (an unknown key is an error, not a silently ignored setting)."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict

from canaryproxy.core.units import parse_duration, parse_size

Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


class Strict(BaseModel):
    # A typo in a key must be an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_listen(value: object) -> tuple[str, int]:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        host, port = value
    elif isinstance(value, str):
        text = value.strip()
        match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]*):(\d+)", text)
        if not match:
            raise ValueError(f"expected host:port such as 127.0.0.1:8080 or [::1]:8080, got {value!r}")
        host = match.group(1) or match.group(3) or "0.0.0.0"
        port = match.group(2) or match.group(4)
    else:
        raise ValueError(f"expected host:port such as 127.0.0.1:8080, got {value!r}")
    port = int(port)
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be within 0-65535, got {port}")
    return str(host), port


Listen = Annotated[tuple[str, int], BeforeValidator(parse_listen)]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_upstream_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL with a host, got {value!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"an upstream URL takes no query or fragment, got {value!r}")
    try:
        parts.port
    except ValueError as exc:
        raise ValueError(f"bad port in {value!r}: {exc}") from None
    return value.rstrip("/")


UpstreamUrl = Annotated[str, BeforeValidator(lambda v: check_upstream_url(v) if isinstance(v, str) else v)]
