"""Writes the token-estimate fixtures: tests/fixtures/streams/*.sse and counts.json.

    .venv/bin/python bench/stream_fixtures.py

Each stream is one answer in the wire format of one server family, as its source writes it
(bench/README.md, "Token estimates", names the code): llama-cpp-python's server (no usage, ever;
`json.dumps` spacing, CRLF from sse-starlette), vLLM's OpenAI server with and without
`stream_options.include_usage` (one chunk per engine step; its usage counts the EOS token, whose
chunk carries no text), and a server that sends several tokens per event (vLLM or SGLang with
`--stream-interval 4`). No model runs here, so the tokens are cut by rule, the way BPE
vocabularies cut these texts: a word with its leading space, long words in two, digits in groups
of up to three, punctuation alone, each CJK character alone, runs of spaces as one token.
`counts.json` holds each stream's known completion tokens (the server's own count).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "streams"
TEXTS = {
    "prose": ("A reverse proxy sits in front of a group of servers and forwards each request to one of "
              "them. During a canary release it sends a small share of the traffic to the new version, "
              "compares what both versions answer, and rolls the new one back when it is worse."),
    "code": ("def retry(call, attempts=3):\n    for attempt in range(attempts):\n        try:\n"
             "            return call()\n        except TimeoutError:\n            if attempt == attempts - 1:\n"
             "                raise\n"),
    "cjk": "金丝雀发布先把一小部分流量发给新版本，比较两个版本的回答，新版本更差时就回滚。",
    "numbers": "Totals for 2024: 1234567 requests, 98.6% served, 31415926 tokens, 2718281 errors.",
}
_PIECES = re.compile(r" ?[A-Za-z]+| ?[0-9]{1,3}| +(?=\S)|\n +|\n|[\u4e00-\u9fff\u3000-\u303f\uff00-\uffef]| ?[^\sA-Za-z0-9]")


def tokens_of(text: str) -> list[str]:
    tokens: list[str] = []
    for piece in _PIECES.findall(text):
        if len(piece.strip()) > 7 and piece.strip().isalpha():  # a rarer long word: two tokens
            half = (len(piece) + 1) // 2
            tokens += [piece[:half], piece[half:]]
        else:
            tokens.append(piece)
    assert "".join(tokens) == text
    return tokens


def llamacpp_python(tokens: list[str]) -> bytes:
    """llama-cpp-python's server: `dict(data=json.dumps(chunk))` through sse-starlette (CRLF)."""
    head = {"id": "chatcmpl-7f3a", "model": "gemma-3-270m-it-Q8_0.gguf", "created": 1764650000,
            "object": "chat.completion.chunk"}
    chunks = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None,
                                    "finish_reason": None}]}]
    chunks += [{**head, "choices": [{"index": 0, "delta": {"content": t}, "logprobs": None, "finish_reason": None}]}
               for t in tokens]
    chunks.append({**head, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]})
    return b"".join(b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks) + b"data: [DONE]\r\n\r\n"


def vllm(tokens: list[str], include_usage: bool, per_event: int = 1) -> bytes:
    """vLLM's chat stream (`model_dump_json(exclude_unset=True)`): role chunk, one chunk per step,
    the EOS step's chunk with the finish reason and no text, then usage when asked for."""
    head = '{"id":"chatcmpl-b21c","object":"chat.completion.chunk","created":1764650000,"model":"Qwen/Qwen2.5-7B-Instruct","choices":['

    def chunk(delta: dict, finish: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return (head + json.dumps(choice, separators=(",", ":"), ensure_ascii=False) + "]}").encode()

    events = [chunk({"role": "assistant", "content": ""}, None)]
    steps = ["".join(tokens[i:i + per_event]) for i in range(0, len(tokens), per_event)]
    events += [chunk({"content": step}, None) for step in steps]
    events.append(chunk({"content": ""}, "stop"))
    if include_usage:
        completion = len(tokens) + 1  # the EOS token
        usage = {"prompt_tokens": 31, "total_tokens": 31 + completion, "completion_tokens": completion}
        events.append((head + '],"usage":' + json.dumps(usage, separators=(",", ":")) + "}").encode())
    return b"".join(b"data: " + e + b"\n\n" for e in events) + b"data: [DONE]\n\n"


FAMILIES = {
    "llamacpp": (llamacpp_python, 0),
    "vllm_usage": (lambda t: vllm(t, True), 1),
    "vllm": (lambda t: vllm(t, False), 1),
    "coalescing": (lambda t: vllm(t, False, per_event=4), 1),
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, object]] = {}
    for family, (write, eos) in FAMILIES.items():
        for name, text in TEXTS.items():
            tokens = tokens_of(text)
            path = f"{family}_{name}.sse"
            (OUT / path).write_bytes(write(tokens))
            counts[path] = {"family": family, "text": name, "completion_tokens": len(tokens) + eos}
    (OUT / "counts.json").write_text(json.dumps(counts, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
