"""The demo's users: sticky traffic at a steady rate, half streaming, some asking for structured
outputs, through the proxy like any client — and, with a `FeedbackPlan`, rating a share of the
answers a while later, quoting the proxy's feedback token as an application would. They count
which version served each answer, as the proxy's served-by header says."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from canaryproxy.sim.scenarios import STREAMING_SHARE, STRUCTURED_SHARE, USERS
from canaryproxy.sim.simulator import VERDICT_HEADER

if TYPE_CHECKING:
    pass


_PROMPTS = (
    "Summarise the release notes of the new model version in two sentences.",
    "Which of these deployment strategies reduces risk the most, and why?",
    "Write a short answer to a customer who asks why their request was slow.",
    "Explain a canary release to a new engineer.",
)
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "sentiment": {"enum": ["positive", "neutral", "negative"]},
        "topics": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["answer", "sentiment"],
    "additionalProperties": False,
}


def _request_bodies() -> list[tuple[float, bytes]]:
    """Every kind of request the users send, encoded once, with its share of the traffic: each
    prompt, answered whole or streamed (with or without the usage chunk), as text or as JSON."""
    deliveries = (({}, 1 - STREAMING_SHARE),
                  ({"stream": True}, STREAMING_SHARE / 2),
                  ({"stream": True, "stream_options": {"include_usage": True}}, STREAMING_SHARE / 2))
    structured = {"response_format": {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": ANSWER_SCHEMA, "strict": True}}}
    formats = (({}, 1 - STRUCTURED_SHARE), (structured, STRUCTURED_SHARE))
    bodies = []
    for prompt in _PROMPTS:
        for delivery, delivery_share in deliveries:
            for output, output_share in formats:
                body = {"model": "demo-model", "messages": [{"role": "user", "content": prompt}],
                        **delivery, **output}
                bodies.append((delivery_share * output_share / len(_PROMPTS), json.dumps(body).encode()))
    return bodies


@dataclass(frozen=True, slots=True)
class FeedbackPlan:
    """Which answers users rate and when: `share` of the answers, after a lognormal delay of
    median `median_delay` seconds (σ = 1 in log space: most within minutes, a few much later)."""

    url: str  # the proxy's feedback endpoint
    header: str  # the response header carrying the feedback token
    share: float
    median_delay: float


class Traffic:
    """Users sending chat requests through the proxy at a steady rate, until stopped.

    Open loop: requests start on schedule whether or not earlier ones have finished (users do not
    wait for each other), up to `MAX_IN_FLIGHT` at once. Each user has a sticky id (`x-user-id`).
    """

    MAX_IN_FLIGHT = 2000
    TICK = 0.01

    def __init__(self, url: str, rate: float, seed: int | None = None,
                 feedback: FeedbackPlan | None = None, served_by_header: str | None = None) -> None:
        self.url = url + "/v1/chat/completions"
        self.feedback = feedback
        self.served_by_header = served_by_header
        self.served_by: Counter[str] = Counter()  # answers by the version the served-by header named
        self.rated = 0  # feedback posts the proxy accepted
        self.rating_failed = 0  # feedback posts refused or unanswered
        self.rate = rate
        self._rng = random.Random(seed)
        shares, self._bodies = zip(*_request_bodies())
        self._cumulative = list(itertools.accumulate(shares))
        self.sent = 0
        self.failed = 0  # no complete answer: an error status, a reset or a truncated body
        self.skipped = 0  # not sent: MAX_IN_FLIGHT reached (the machine cannot keep up)
        self._in_flight: set[asyncio.Task[None]] = set()  # requests, and ratings waiting to be sent
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.MAX_IN_FLIGHT, limit_per_host=0)
        self._session = aiohttp.ClientSession(connector=connector,
                                              timeout=aiohttp.ClientTimeout(total=60))
        self._task = asyncio.create_task(self._run(), name="demo-traffic")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._in_flight) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        launched = 0
        while True:
            due = int((loop.time() - started) * self.rate) - launched
            for _ in range(due):
                if len(self._in_flight) >= self.MAX_IN_FLIGHT:
                    self.skipped += 1
                    continue
                task = loop.create_task(self._one())
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
            launched += due
            await asyncio.sleep(self.TICK)

    async def _one(self) -> None:
        assert self._session is not None
        rng = self._rng
        body = rng.choices(self._bodies, cum_weights=self._cumulative)[0]
        headers = {"x-user-id": f"user-{rng.randrange(USERS)}", "Content-Type": "application/json"}
        self.sent += 1
        try:
            async with self._session.post(self.url, data=body, headers=headers) as response:
                await response.read()
                if self.served_by_header is not None and self.served_by_header in response.headers:
                    self.served_by[response.headers[self.served_by_header]] += 1
                if response.status != 200:
                    self.failed += 1
                elif self.feedback is not None and rng.random() < self.feedback.share:
                    self._rate_later(response.headers.get(self.feedback.header),
                                     response.headers.get(VERDICT_HEADER) == "disliked")
        except (aiohttp.ClientError, asyncio.TimeoutError):
            self.failed += 1

    def _rate_later(self, token: str | None, disliked: bool) -> None:
        """A thumbs up or down on one answer, after the user took their time."""
        assert self.feedback is not None
        if token is None:
            self.rating_failed += 1
            return
        delay = self._rng.lognormvariate(math.log(self.feedback.median_delay), 1.0)
        task = asyncio.get_running_loop().create_task(self._rate(token, not disliked, delay))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _rate(self, token: str, thumbs_up: bool, delay: float) -> None:
        assert self._session is not None and self.feedback is not None
        await asyncio.sleep(delay)
        try:
            async with self._session.post(self.feedback.url, json={
                    "token": token, "name": "thumbs", "value": thumbs_up}) as response:
                await response.read()
                if response.status == 202:
                    self.rated += 1
                else:
                    self.rating_failed += 1
        except (aiohttp.ClientError, asyncio.TimeoutError):
            self.rating_failed += 1


# --- running it ---------------------------------------------------------------------------------------

