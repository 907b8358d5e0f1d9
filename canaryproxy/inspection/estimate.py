"""The proxy's own count of completion tokens, for responses without usage and for comparing like
with like (core/token_sources.py).

A streamed answer arrives as content deltas. llama.cpp's server sends one token per delta, and so
do vLLM, SGLang and TGI at their defaults (bench/README.md, "Token estimates", names the code
this was checked against): there the number of deltas is the number of tokens, whatever the
tokens look like (code, CJK and digits have short tokens, where characters ÷ 4 is far off).
Some streams coalesce tokens: vLLM or SGLang with `--stream-interval` above 1, speculative
decoding, Anthropic's text deltas; a whole JSON answer is one "delta". A delta holds a token of
about four characters of English (fewer in code and CJK), so deltas averaging more than
`COALESCED_CHARS_PER_DELTA` characters hold several tokens each: the estimate is then the length,
about `CHARS_PER_TOKEN` characters a token. The measured error of both, per server family, is in
bench/README.md.
"""

from __future__ import annotations

CHARS_PER_TOKEN = 4
# Above this mean the deltas hold several tokens each (one token averages 3-5 characters).
COALESCED_CHARS_PER_DELTA = 6


def completion_tokens(chars: int, deltas: int) -> int:
    """Completion tokens of an output of `chars` characters that arrived in `deltas` deltas."""
    if chars <= COALESCED_CHARS_PER_DELTA * deltas:
        return deltas
    return -(-chars // CHARS_PER_TOKEN)
