"""How a pydantic validation error becomes one line of a config error: `field.path: what is wrong`."""

from __future__ import annotations

from typing import Any, Mapping


def describe(error: Mapping[str, Any]) -> str:
    location = ""
    for part in error["loc"]:
        if isinstance(part, int):
            location += f"[{part}]"
        else:
            location += f".{part}" if location else str(part)
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key (check the spelling; see config/example.yaml)"
    elif error["type"] == "missing":
        message = "required"
    elif "input" in error and not isinstance(error["input"], (dict, list)) and "got" not in message:
        message += f" (got {error['input']!r})"
    return f"{location or '(top)'}: {message}"
