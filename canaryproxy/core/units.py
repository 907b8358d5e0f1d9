"""Durations and sizes as people write them in config: `250ms`, `5s`, `10m`, `1h30m`, `32MiB`."""

from __future__ import annotations

import math
import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?")
_SIZE_BYTES = {
    None: 1, "B": 1,
    "KB": 1000, "MB": 1000**2, "GB": 1000**3,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
}


def parse_duration(value: object) -> float:
    """Seconds from `1h30m`, `250ms`, `10s`, or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 5s, 10m or 250ms, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
            raise ValueError(f"expected a duration like 5s, 10m, 1h30m or 250ms, got {value!r}")
        seconds = sum(float(n) * _DURATION_SECONDS[u] for n, u in parts)
    else:
        raise ValueError(f"expected a duration like 5s, 10m or 250ms, got {value!r}")
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"a duration must be a finite number of seconds >= 0, got {value!r}")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from `32MiB`, `10MB`, `4096`."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 32MiB or 1MB, got {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if not match:
            raise ValueError(f"expected a size like 32MiB, 512KiB or 1MB, got {value!r}")
        size = int(float(match.group(1)) * _SIZE_BYTES[match.group(2)])
    else:
        raise ValueError(f"expected a size like 32MiB or 1MB, got {value!r}")
    if size < 0:
        raise ValueError(f"a size must be >= 0, got {value!r}")
    return size


def format_duration(seconds: float) -> str:
    """`1h2m3s`, `4m0s`, `2.5s`, `250ms`: short, exact enough for logs and the CLI."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s"


def whole_buckets(seconds: float, bucket_seconds: float) -> int:
    """The number of buckets that cover `seconds`. A ratio within float noise of a whole number is
    that number (0.3 / 0.1 is 2.9999999999999996, meaning 3)."""
    ratio = seconds / bucket_seconds
    nearest = round(ratio)
    return nearest if math.isclose(ratio, nearest, rel_tol=1e-9) else math.ceil(ratio)
