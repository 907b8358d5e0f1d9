"""What inline inspection costs per response, without the network: a microbenchmark.

    .venv/bin/python bench/inspect_micro.py [--repeat 25] [--quick]

Times the calls the data plane makes (`read_request`, `inspector_for`, `feed` per upstream chunk,
`finish`, and `apply` of the Inspection to the Outcome) on the benchmark's own payloads
(`payloads.py`):

* sse          the 50-event chat stream, one event per chunk, usage asked for by the client (the
               workload of `proxy_overhead.py`): inspector_for + 50 feeds + finish + apply;
* sse-injected the same stream when the proxy injected include_usage and must cut the usage event
               out (the default for clients that do not ask for usage);
* sse-obfuscated, sse-escaped  the same stream with OpenAI's per-event `obfuscation` padding, and
               with content that needs JSON escapes (newlines, quotes: markdown answers);
* sse-5, sse-obfuscated-5  the first two with 5 events per chunk, as reads come under load (the
               upstream writes faster than the proxy reads): µs/chunk is then per 5 events;
* json         read_request + inspector_for + feed + finish + apply of the 579-byte chat.completion;
* generic      a non-LLM path: inspector_for (the pass-through) + 50 feeds + finish + apply;
* ttft added   how long `feed` holds the first-content chunk (role chunk fed before, untimed).

The machine may be busy: every figure is the best of `--repeat` runs (each long enough to be
above timer noise), with the median beside it; compare best with best.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path

from multidict import CIMultiDict

sys.path.insert(0, str(Path(__file__).resolve().parent))

import payloads  # noqa: E402

from canaryproxy.core.types import Role, Outcome  # noqa: E402
from canaryproxy.inspection import Inspection, InspectionSettings, apply, inspector_for, read_request  # noqa: E402

SETTINGS = InspectionSettings()
SSE_HEADERS = CIMultiDict({"Content-Type": "text/event-stream"})
JSON_HEADERS = CIMultiDict(
    {"Content-Type": "application/json", "Content-Length": str(len(payloads.JSON_RESPONSE_BODY))}
)
NOW = time.monotonic


def _without_usage_request(body: bytes) -> bytes:
    request = json.loads(body)
    del request["stream_options"]
    return json.dumps(request, separators=(",", ":")).encode()


def _obfuscated(events: Sequence[bytes]) -> tuple[bytes, ...]:
    """Each JSON event with OpenAI's `obfuscation` member, padded to a varying length."""
    padded = []
    for number, event in enumerate(events):
        if event.startswith(b"data: {"):
            event = event[:-3] + b',"obfuscation":"' + b"aB3xZ9q"[: number % 8] + b'"}\n\n'
        padded.append(event)
    return tuple(padded)


def _escaped(events: Sequence[bytes]) -> tuple[bytes, ...]:
    """Every fourth word ends a markdown line: its delta carries a JSON-escaped newline or quote."""
    changed = []
    for number, event in enumerate(events):
        if number % 4 == 3 and b'"content":" ' in event:
            event = event.replace(b'"},"logprobs"', b'\\n- \\"x\\""},"logprobs"', 1)
        changed.append(event)
    return tuple(changed)


def _batched(events: Sequence[bytes], size: int) -> tuple[bytes, ...]:
    """The stream as reads of `size` events each (the role event alone first, as it comes)."""
    first, rest = events[0], events[1:]
    return (first, *(b"".join(rest[i : i + size]) for i in range(0, len(rest), size)))


def stream_run(path: str, request: bytes, events: Sequence[bytes], headers: CIMultiDict[str]) -> Callable[[], None]:
    _, facts = read_request(path, request, SETTINGS)
    content_type = headers.get("Content-Type", "")
    # The data plane creates the Outcome with or without inspection: one, filled again each run.
    # The Inspection exists only for inspected requests: one per run.
    outcome = Outcome(role=Role.CANARY, started=0.0)

    def run() -> None:
        inspection = Inspection()
        inspector = inspector_for(facts, 200, content_type, headers, inspection, SETTINGS,
                                  role=Role.CANARY, started=0.0, now=NOW)
        feed = inspector.feed
        for event in events:
            feed(event)
        inspector.finish(True)
        apply(outcome, inspection, False)

    return run


def json_run() -> Callable[[], None]:
    body = payloads.JSON_RESPONSE_BODY
    outcome = Outcome(role=Role.CANARY, started=0.0)

    def run() -> None:
        _, facts = read_request(payloads.PATH, payloads.JSON_REQUEST_BODY, SETTINGS)
        inspection = Inspection()
        inspector = inspector_for(facts, 200, "application/json", JSON_HEADERS, inspection, SETTINGS,
                                  role=Role.CANARY, started=0.0, now=NOW)
        inspector.feed(body)
        inspector.finish(True)
        apply(outcome, inspection, False)

    return run


def timed(run: Callable[[], None], repeat: int, min_seconds: float = 0.05) -> tuple[float, float]:
    """(best, median) seconds per call over `repeat` runs of enough calls to last `min_seconds`."""
    timer = timeit.Timer(run)
    number, _ = timer.autorange()
    number = max(number, int(number * min_seconds / 0.2))
    runs = [total / number for total in timer.repeat(repeat=repeat, number=number)]
    return min(runs), statistics.median(runs)


def ttft_added(events: Sequence[bytes], samples: int) -> tuple[float, float]:
    """(best, median) seconds `feed` takes on the first chunk with content."""
    _, facts = read_request(payloads.PATH, payloads.SSE_REQUEST_BODY, SETTINGS)
    role, first_content = events[0], events[1]
    durations = []
    for _ in range(samples):
        inspector = inspector_for(facts, 200, "text/event-stream", SSE_HEADERS, Inspection(), SETTINGS,
                                  role=Role.CANARY, started=0.0, now=NOW)
        inspector.feed(role)
        started = time.perf_counter()
        inspector.feed(first_content)
        durations.append(time.perf_counter() - started)
    return min(durations), statistics.median(durations)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=25, help="runs per figure (best and median reported)")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs: a smoke test, not a measurement")
    args = parser.parse_args(argv)
    repeat = 3 if args.quick else args.repeat
    min_seconds = 0.005 if args.quick else 0.05

    events = payloads.SSE_EVENTS
    injected_request = _without_usage_request(payloads.SSE_REQUEST_BODY)
    streams = {
        "sse": stream_run(payloads.PATH, payloads.SSE_REQUEST_BODY, events, SSE_HEADERS),
        "sse-injected": stream_run(payloads.PATH, injected_request, events, SSE_HEADERS),
        "sse-obfuscated": stream_run(payloads.PATH, payloads.SSE_REQUEST_BODY, _obfuscated(events), SSE_HEADERS),
        "sse-escaped": stream_run(payloads.PATH, payloads.SSE_REQUEST_BODY, _escaped(events), SSE_HEADERS),
        "generic": stream_run("/v1/models", b"", events, SSE_HEADERS),
        "sse-5": stream_run(payloads.PATH, payloads.SSE_REQUEST_BODY, _batched(events, 5), SSE_HEADERS),
        "sse-obfuscated-5": stream_run(
            payloads.PATH, payloads.SSE_REQUEST_BODY, _batched(_obfuscated(events), 5), SSE_HEADERS
        ),
    }
    print(f"{'workload':<16}{'best µs':>10}{'median µs':>11}{'best µs/chunk':>15}   ({repeat} runs each)")
    for name, run in streams.items():
        chunks = len(_batched(events, 5)) if name.endswith("-5") else len(events)
        best, median = timed(run, repeat, min_seconds)
        print(f"{name:<16}{best * 1e6:>10.1f}{median * 1e6:>11.1f}{best * 1e6 / chunks:>15.2f}")
    best, median = timed(json_run(), repeat, min_seconds)
    print(f"{'json':<16}{best * 1e6:>10.1f}{median * 1e6:>11.1f}{'':>15}")
    best, median = ttft_added(events, 200 if args.quick else 5000)
    print(f"{'ttft added':<16}{best * 1e6:>10.1f}{median * 1e6:>11.1f}{'':>15}   (feed of the first content chunk)")


if __name__ == "__main__":
    main()
