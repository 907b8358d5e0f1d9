"""JSON in bytes, read as `json.loads` reads it, at orjson's speed.

The inspection parses every inspected request body, every whole JSON answer and the stream
events its fast path cannot read, on the request path: orjson (a maintained Rust parser) does
that about 2.5 times faster than the standard library on the benchmark's bodies (bench/README.md).
It reads UTF-8 only and refuses a few things `json.loads` takes (NaN and Infinity, a number that
overflows a double, lone surrogates, a byte-order mark, UTF-16 and UTF-32); anything it refuses
goes to `json.loads`, so the value, or the exception, is the one `json.loads` gives, with two
differences: an integer beyond 64 bits reads as a float, and nesting up to orjson's 1,024 levels
reads where `json.loads` runs out of recursion (RecursionError) a little below that. No count the
inspection reads is that large, and the one place that writes a parsed body back out (a request
whose stream_options must be rewritten, inspection/request.py) reads it again with `json.loads`
first, so the client's numbers go upstream as they came (or, too deep for it, the body unchanged).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_orjson_loads = orjson.loads
_Refused = orjson.JSONDecodeError


def loads(data: bytes) -> Any:
    try:
        return _orjson_loads(data)
    except _Refused:
        return json.loads(data)  # what orjson refuses: json.loads' value, or its exception
