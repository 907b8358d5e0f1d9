"""Alerts to webhooks, off the request path, never blocking the controller.

`Alerter.send(alert)` only logs the alert and puts it on a bounded queue; a background task posts
it to every webhook with a timeout and a few retries with backoff. A webhook that is down costs
nothing but a warning in the log: the rollout never waits for it.

Formats: `generic` posts the alert as JSON; `slack` posts `{"text": ...}` with the title and the
message (also what Mattermost, Rocket.Chat and Teams' Slack-compatible hooks accept).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import aiohttp

from canaryproxy.aio import cancel_and_wait
from canaryproxy.core.stages import Alert

log = logging.getLogger("canaryproxy.alerts")

_QUEUE_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    format: str = "generic"  # or "slack"
    timeout: float = 5.0
    retries: int = 3


def alert_document(alert: Alert, context: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "kind": alert.kind.value,
        "title": alert.title,
        "message": alert.message,
        "details": json_safe(alert.details),
        **context,
    }


def slack_payload(document: Mapping[str, Any]) -> dict[str, Any]:
    icon = {"rollback": ":rotating_light:", "pause": ":double_vertical_bar:",
            "promotion": ":white_check_mark:", "insufficient_data": ":hourglass:"}.get(document["kind"], ":bird:")
    return {"text": f"{icon} *{document['title']}*\n{document['message']}"}


def json_safe(value: Any) -> Any:
    """Plain JSON values only (enums, dataclasses and the like become strings)."""
    return json.loads(json.dumps(value, default=str))


class Alerter:
    def __init__(self, webhooks: Sequence[Webhook], context: Mapping[str, Any] | None = None) -> None:
        self._webhooks = tuple(webhooks)
        self._context = dict(context or {})
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(_QUEUE_LIMIT)
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.sent = 0
        self.failed = 0

    async def start(self) -> None:
        if self._webhooks:
            self._session = aiohttp.ClientSession(trust_env=False)
            self._task = asyncio.create_task(self._deliver_forever(), name="canaryproxy-alerts")

    async def close(self, flush_timeout: float = 2.0) -> None:
        if self._task is not None:
            # Give queued alerts (a rollback during shutdown) a moment to go out.
            try:
                await asyncio.wait_for(self._queue.join(), flush_timeout)
            except asyncio.TimeoutError:
                log.warning("%d alerts not delivered before shutdown", self._queue.qsize())
            await cancel_and_wait(self._task)
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def send(self, alert: Alert, **context: Any) -> None:
        document = alert_document(alert, {**self._context, **context})
        level = logging.WARNING if alert.kind.value in ("rollback", "pause", "insufficient_data") else logging.INFO
        log.log(level, "ALERT %s: %s — %s", alert.kind.value, alert.title, alert.message)
        if not self._webhooks:
            return
        try:
            self._queue.put_nowait(document)
        except asyncio.QueueFull:
            log.error("alert queue full (%d); dropping alert %r", _QUEUE_LIMIT, alert.title)

    async def _deliver_forever(self) -> None:
        while True:
            document = await self._queue.get()
            try:
                await asyncio.gather(*(self._deliver(hook, document) for hook in self._webhooks))
            finally:
                self._queue.task_done()

    async def _deliver(self, hook: Webhook, document: Mapping[str, Any]) -> None:
        assert self._session is not None
        payload = slack_payload(document) if hook.format == "slack" else document
        delay = 0.5
        for attempt in range(hook.retries + 1):
            try:
                async with self._session.post(
                    hook.url, json=payload, timeout=aiohttp.ClientTimeout(total=hook.timeout)
                ) as response:
                    if response.status < 300:
                        self.sent += 1
                        return
                    problem = f"HTTP {response.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt < hook.retries:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self.failed += 1
        log.warning("webhook %s failed after %d attempts (%s): alert %r not delivered",
                    hook.url, hook.retries + 1, problem, document.get("title"))
