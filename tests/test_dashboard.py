"""The dashboard at GET / of the admin listener, in headless Chromium, and GET /admin/series.

The browser drives a real proxy with a rollout in progress and LLM traffic through it. Selenium
blocks, so its steps run in a worker thread (`asyncio.to_thread`) while this event loop serves the
proxy, the upstreams and the traffic.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import pytest

from canaryproxy.admin.api import weight_history
from canaryproxy.server import CanaryProxy
from tests.llm import chat_handler
from tests.shadow.conftest import CHAT, chat, shadow_rollout, words_handler
from tests.support import eventually

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "dash-token"

# Long holds keep the rollout at stage 1 (50%) while a test looks at it; buckets of 250 ms make
# closed buckets, and so points, appear within a poll.
ROLLOUT = {
    "stages": [{"weight": 50, "hold": "60s"}, {"weight": 100, "hold": "60s"}],
    "min_requests": 5,
    "max_hold": "120s",
    "evaluate_every": "100ms",
    "rules": [{"name": "errors", "metric": "error_rate", "above": 0.1, "window": "5s", "for": "1s",
               "min_samples": 5}],
    "judge": {"enabled": False},
}
WINDOWS = {"bucket": "250ms", "span": "300s"}
CHARTS = ("weight", "request_rate", "error_rate", "latency_p95", "ttft_p95", "tokens_per_request",
          "guardrail_rate")


# --- the proxy and its traffic ---------------------------------------------------------------------


class ChatTraffic:
    """A few users streaming chat completions through the proxy until stopped."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"
        self._tasks: list[asyncio.Task[None]] = []

    async def _user(self, user: int) -> None:
        body = {"model": "m-1", "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "say hello to the canary dashboard"}]}
        async with aiohttp.ClientSession() as client:
            while True:
                async with client.post(self.url, json=body, headers={"x-user-id": f"user-{user}"}) as r:
                    await r.read()
                await asyncio.sleep(0.01)

    def start(self, users: int = 8) -> None:
        self._tasks = [asyncio.create_task(self._user(user)) for user in range(users)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass
class Rollout:
    proxy: CanaryProxy
    traffic: ChatTraffic


@pytest.fixture
async def rollout(upstreams, make_proxy) -> AsyncIterator[Rollout]:
    """A proxy at stage 1 of a rollout (50% canary) with LLM traffic on both versions."""
    for upstream in upstreams:
        upstream.on("POST", "/v1/chat/completions", chat_handler)
    proxy = await make_proxy(rollout=ROLLOUT, windows=WINDOWS, admin={"token": TOKEN},
                             routing={"sticky": ["header:x-user-id"]})
    traffic = ChatTraffic(proxy.data_port)
    traffic.start()
    yield Rollout(proxy, traffic)
    await traffic.stop()


async def get(proxy, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{proxy.admin_port}{path}") as r:
            return r.status, await r.json()


async def post(proxy, action: str, body: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as client:
        async with client.post(f"http://127.0.0.1:{proxy.admin_port}/admin/{action}", json=body,
                               headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200, await r.text()
            return await r.json()


async def eventually_async(check: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    """Await check() until it returns something truthy (returned), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s: {check}")
        await asyncio.sleep(0.1)


# --- /admin/series -----------------------------------------------------------------------------------


async def test_series_has_a_point_per_step_and_null_where_a_version_had_no_samples(upstreams, make_proxy):
    proxy = await make_proxy(rollout={**ROLLOUT, "start": "manual"}, windows=WINDOWS)  # canary at 0%
    async with aiohttp.ClientSession() as client:
        for user in range(20):
            async with client.get(f"http://127.0.0.1:{proxy.data_port}/v1/models",
                                  headers={"x-user-id": f"u{user}"}) as r:
                await r.read()
    asked = time.time()

    async def every_request_in_a_closed_bucket() -> dict[str, Any] | None:
        status, series = await get(proxy, "/admin/series")
        assert status == 200, series
        return series if series["t"][-1] > asked + 0.25 else None

    series = await eventually_async(every_request_in_a_closed_bucket)
    # The windows keep 300 s, less than the default 15 minutes; the default step is the shortest
    # whole number of 250 ms buckets giving at most 180 points.
    assert series["step"] == 1.75
    assert len(series["t"]) == 171 and series["span"] == pytest.approx(171 * 1.75)
    assert series["t"] == sorted(series["t"]) and series["t"][-1] <= time.time()
    # Whole steps, then the newest point: the buckets of its step closed so far.
    assert series["t"][-2] - series["t"][0] == pytest.approx(169 * 1.75, abs=0.002)
    assert 0.25 - 0.002 <= series["t"][-1] - series["t"][-2] <= 1.75 + 0.002
    for role in ("stable", "canary"):
        assert sorted(series[role]) == sorted(
            ["request_rate", "error_rate", "latency_p95", "ttft_p95", "tokens_per_request", "guardrail_rate",
             "negative_feedback_share"])
        assert all(len(values) == 171 for values in series[role].values())
    assert all(v is None for values in series["canary"].values() for v in values)
    stable = series["stable"]
    with_requests = [i for i, v in enumerate(stable["request_rate"]) if v is not None]
    assert series["t"][with_requests[0]] >= asked - 3 * 1.75  # nothing before the traffic
    # The newest point holds only the buckets closed so far: its rate is over its own length.
    lengths = [1.75] * 170 + [series["t"][-1] - series["t"][-2]]
    assert sum(stable["request_rate"][i] * lengths[i] for i in with_requests) == pytest.approx(20)
    assert stable["error_rate"][with_requests[0]] == 0.0
    assert stable["latency_p95"][with_requests[0]] > 0
    assert stable["ttft_p95"][with_requests[0]] is None  # /v1/models has no tokens
    assert series["weight"]["value"] == [0.0, 0.0]


async def test_the_weight_over_time_comes_from_the_decision_record(upstreams, make_proxy):
    proxy = await make_proxy(rollout={**ROLLOUT, "start": "manual"}, windows=WINDOWS, admin={"token": TOKEN})
    started = time.time()
    await post(proxy, "start", {"reason": "v2"})
    await post(proxy, "weight", {"weight": 7.5, "reason": "hold here"})
    status, series = await get(proxy, "/admin/series?span=2m&step=5s")
    assert status == 200
    weight = series["weight"]
    assert weight["value"] == [0, 50, 7.5, 7.5]
    assert weight["t"][0] == pytest.approx(time.time() - 120, abs=2)
    assert started <= weight["t"][1] <= weight["t"][2] <= weight["t"][3] <= time.time()
    assert len(series["t"]) == 24 and series["step"] == 5


def test_the_weight_at_the_start_of_the_span_is_the_one_in_force_then():
    def record(time: float, before: float | None, after: float) -> dict[str, Any]:
        return {"time": time, "before": None if before is None else {"weight": before},
                "after": {"weight": after}}

    records = [record(100, 0, 5), record(150, None, 5), record(200, 5, 25), record(300, 25, 0)]
    assert weight_history(records, 180, 400, 0) == {"t": [180, 200, 300, 400], "value": [5, 25, 0, 0]}
    assert weight_history(records, 50, 400, 0) == {"t": [50, 100, 200, 300, 400], "value": [0, 5, 25, 0, 0]}
    # The record has lost its oldest entries: the first one left says what was in force before it.
    assert weight_history(records[2:], 50, 250, 25) == {"t": [50, 200, 250], "value": [5, 25, 25]}
    assert weight_history([], 50, 250, 12.5) == {"t": [50, 250], "value": [12.5, 12.5]}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("span=bogus", "span: expected a duration like 5s"),
        ("step=0s", "series step must be a positive number of seconds, got 0.0"),
        ("step=100ms", "series step 0.1s is not a whole number of 0.25s buckets"),
        ("span=2h", "series span 7200s is longer than the 300s the window keeps"),
        ("span=5m&step=250ms", "makes 1200 points; at most 240"),
        ("span=1s&step=2s", "series span 1s is shorter than its step 2s"),
    ],
)
async def test_a_bad_span_or_step_is_a_400_saying_what_is_wrong(upstreams, make_proxy, query, message):
    proxy = await make_proxy(rollout=ROLLOUT, windows=WINDOWS)
    status, body = await get(proxy, f"/admin/series?{query}")
    assert status == 400
    assert message in body["error"]["message"]


async def test_a_fixed_split_without_a_rollout_has_series_too(upstreams, make_proxy):
    proxy = await make_proxy(routing={"weight": 10})
    status, body = await get(proxy, "/admin/series")
    assert status == 200 and set(body["stable"]) >= {"error_rate", "latency_p95"}
    assert body["weight"]["value"][-1] == 10


async def test_the_page_allows_only_its_own_script_and_style(upstreams, make_proxy):
    proxy = await make_proxy(rollout=ROLLOUT)
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{proxy.admin_port}/") as r:
            assert r.status == 200 and r.content_type == "text/html"
            directives = r.headers["Content-Security-Policy"].split(";")
            page = await r.text()
    policy = dict(directive.strip().split(" ", 1) for directive in directives)
    assert policy["default-src"] == "'none'" and policy["connect-src"] == "'self'"
    assert policy["script-src"].startswith("'sha256-") and "unsafe" not in policy["script-src"]
    assert policy["frame-ancestors"] == "'none'"
    assert len(page.encode()) < 44_000  # was 40 kB before the shadow panel


# --- in the browser --------------------------------------------------------------------------------


def require_browser() -> None:
    """Skip without Chromium, ChromeDriver or Selenium; in CI (CANARYPROXY_REQUIRE_SERVICES=1) fail."""
    problems = [f"{path} is not installed" for path in (CHROMIUM, CHROMEDRIVER)
                if not os.access(path, os.X_OK)]
    if importlib.util.find_spec("selenium") is None:
        problems.append("selenium is not installed (pip install -e '.[test]')")
    if problems:
        message = "; ".join(problems) + " (apt-get install chromium chromium-driver)"
        if os.environ.get("CANARYPROXY_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    with tempfile.TemporaryDirectory() as profile:
        for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--no-first-run", f"--user-data-dir={profile}", "--window-size=1400,1000"):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


class Page:
    """The dashboard in the browser. Blocking: call its methods through `asyncio.to_thread`."""

    def __init__(self, driver: Any, admin_port: int) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.origin = f"http://127.0.0.1:{admin_port}"
        self.wait = WebDriverWait(driver, 10, poll_frequency=0.05)

    def open(self) -> None:
        self.driver.get("about:blank")  # the previous test's page stops polling
        self.driver.get_log("browser")  # and its messages are not this test's
        self.driver.get(self.origin + "/")

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def until(self, script: str, *args: Any) -> Any:
        """Wait until `script` returns something truthy, and return it."""
        return self.wait.until(lambda _: self.js(script, *args), message=script)

    def chart_points(self) -> dict[str, int]:
        return self.js("return Object.fromEntries([...document.querySelectorAll('[data-chart]:not([hidden])')]"
                       ".map((e) => [e.dataset.chart, Number(e.dataset.points)]))")

    def command(self, action: str, token: str, reason: str) -> str:
        """Click an action, type the token and reason, confirm; the message the page shows."""
        from selenium.webdriver.common.by import By

        self.js("document.getElementById('command-message').textContent = ''")
        self.driver.find_element(By.CSS_SELECTOR, f"[data-action={action}]").click()
        for field, text in (("token", token), ("reason", reason)):
            element = self.driver.find_element(By.ID, field)
            element.clear()
            element.send_keys(text)
        self.driver.find_element(By.ID, "confirm").click()
        return self.until("return document.getElementById('command-message').textContent")

    def console_errors(self, allowed: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """SEVERE browser log entries, except network failures whose message has an allowed part."""
        return [entry for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"
                and not (entry["source"] == "network" and any(part in entry["message"] for part in allowed))]


def admin_phase(admin_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/admin/status", timeout=5) as r:
        return json.load(r)["phase"]


async def test_the_page_draws_the_rollout_and_a_line_in_every_chart(rollout, browser):
    page = Page(browser, rollout.proxy.admin_port)

    def look() -> dict[str, Any]:
        page.open()
        page.until("return document.body.dataset.phase === 'progressing'")
        page.until("return [...document.querySelectorAll('[data-chart]:not([hidden])')]"
                   ".every((e) => Number(e.dataset.points) > 0)")
        page.until("return document.querySelector('#rules tr[data-source=errors]')")
        return {
            "points": page.chart_points(),
            "current_stage": page.js("return document.querySelector('#timeline li.current').textContent"),
            "weight": page.js("return document.getElementById('weight').textContent"),
            "rule": page.js("return document.querySelector('#rules tr[data-source=errors]').textContent"),
            "decisions": page.js("return document.getElementById('decisions').textContent"),
            "legend": page.js("return document.querySelector('[data-chart=latency_p95] .legend')"
                              ".textContent"),
            "feedback_hidden": page.js("return document.querySelector('[data-chart=negative_feedback_share]').hidden"),
            "shadow_hidden": page.js("return document.getElementById('shadow').hidden"),
            "errors": page.console_errors(),
        }

    seen = await asyncio.to_thread(look)
    assert set(seen["points"]) == set(CHARTS)  # and not the feedback chart: this proxy takes none
    assert seen["feedback_hidden"] is True
    assert seen["shadow_hidden"] is True  # a plan without a shadow stage
    assert seen["points"]["weight"] >= 2  # 0% before the start, 50% since
    assert "50%" in seen["current_stage"] and "stage 1" in seen["current_stage"]
    assert seen["weight"] == "50%"
    assert "error_rate" in seen["rule"] and "> 10%" in seen["rule"]
    assert "rollout.start is auto" in seen["decisions"]
    assert "stable" in seen["legend"] and "canary" in seen["legend"] and "ms" in seen["legend"]
    assert seen["errors"] == []


async def test_rollback_from_the_page_needs_the_token_and_shows_the_refusal(rollout, browser):
    admin_port = rollout.proxy.admin_port
    page = Page(browser, admin_port)
    hostile = '<img src=x id=injected> "quoted" & </td>'

    def operate() -> dict[str, Any]:
        page.open()
        page.until("return document.body.dataset.phase === 'progressing'")
        without = page.command("rollback", "", "no token")
        wrong = page.command("rollback", "not-the-token", "wrong token")
        phase_after_refusals = admin_phase(admin_port)
        accepted = page.command("rollback", TOKEN, hostile)
        page.until("return document.body.dataset.phase === 'rolled_back'")
        page.until("return document.getElementById('decisions').textContent.includes(arguments[0])", hostile)
        return {
            "without": without, "wrong": wrong, "phase_after_refusals": phase_after_refusals,
            "accepted": accepted, "phase": admin_phase(admin_port),
            "injected": page.js("return document.getElementById('injected') !== null"),
            "stored_token": page.js("return sessionStorage.getItem('canaryproxy.adminToken')"),
            "errors": page.console_errors(allowed=("/admin/rollback",)),
        }

    seen = await asyncio.to_thread(operate)
    assert seen["without"] == "Roll back refused (401): admin mutations need 'Authorization: Bearer <token>'"
    assert seen["wrong"] == "Roll back refused (403): the admin token is not valid"
    assert seen["phase_after_refusals"] == "progressing"
    assert seen["accepted"] == "Roll back done: the rollout is rolled back, canary weight 0%."
    assert seen["phase"] == "rolled_back" and rollout.proxy.weight == 0
    assert not seen["injected"]  # the reason was shown as text, not parsed as HTML
    assert seen["stored_token"] == TOKEN
    assert seen["errors"] == []


async def test_an_unreachable_admin_api_shows_a_banner_and_no_script_error(rollout, browser):
    page = Page(browser, rollout.proxy.admin_port)
    await asyncio.to_thread(lambda: (page.open(), page.until("return document.body.dataset.phase")))
    await rollout.traffic.stop()
    await rollout.proxy.shutdown()

    def banner() -> dict[str, Any]:
        text = page.until("const b = document.getElementById('banner'); return !b.hidden && b.textContent")
        return {"banner": text, "errors": page.console_errors(allowed=("ERR_CONNECTION_REFUSED",))}

    seen = await asyncio.to_thread(banner)
    assert seen["banner"].startswith("The admin API is unreachable (/admin/status). Retrying every 2 s.")
    assert seen["errors"] == []


# --- a shadow stage ----------------------------------------------------------------------------------

# The canary's answer is HTML-looking text: the sample that shows it must show it as text.
HOSTILE_WORDS = ["<img", "src=x", "id=injected-sample>", "is", "42", "</pre>"]


async def test_a_shadow_stage_has_a_panel_with_its_pairs_tests_and_differing_samples(upstreams, make_proxy, browser):
    stable, canary = upstreams
    stable.on("POST", CHAT, words_handler(["the", "answer", "is", "42"]))
    canary.on("POST", CHAT, words_handler(HOSTILE_WORDS))
    shadowing = await make_proxy(rollout=shadow_rollout(min_requests=20), shadow={"keep_outputs": True})
    for user in range(5):
        await chat(shadowing.data_port, user=f"u{user}", stream=user % 2 == 1)
    await eventually(lambda: shadowing.control.evidence.pairs.pairs == 5)
    page = Page(browser, shadowing.admin_port)

    def look() -> dict[str, Any]:
        page.open()
        page.until("return !document.getElementById('shadow').hidden")
        page.until("return document.querySelectorAll('#shadow-samples details').length === 5")
        page.js("document.querySelector('#shadow-samples details').open = true")
        text = "return document.getElementById(arguments[0]).textContent"
        return {
            "state": page.js(text, "shadow-state"), "verdict": page.js(text, "shadow-verdict"),
            "facts": page.js("return Object.fromEntries([...document.querySelectorAll('#shadow [data-fact]')]"
                             ".map((e) => [e.dataset.fact, e.textContent]))"),
            "tests": page.js("return Object.fromEntries([...document.querySelectorAll('#shadow-tests tr')]"
                             ".map((r) => [r.dataset.test, [...r.cells].slice(1, 6).map((c) => c.textContent)]))"),
            "kept": page.js(text, "shadow-kept"),
            "canary_text": page.js("return document.querySelector('#shadow-samples pre[data-side=canary]').textContent"),
            "injected": page.js("return document.getElementById('injected-sample') !== null"),
            "stage": page.js("return document.querySelector('#timeline li.current').textContent"),
            "hold": page.js(text, "hold-text"), "header": page.js(text, "stage-text"),
            "errors": page.console_errors(),
        }

    seen = await asyncio.to_thread(look)
    assert seen["state"] == "copying 100% of the requests to the canary; users get stable's answers"
    assert seen["verdict"] == "not shown no worse yet"
    facts = seen["facts"]
    assert facts["pairs compared"] == "5" and facts["same text"] == "0%" and facts["sent"] == "5"
    assert facts["tokens"] == "1.50\u00d7" and facts["dropped"] == "0" and facts["in flight"] == "0 of 64"
    assert facts["copying now"] == "100%" and facts["answers"] == "5"  # the shadow's own window
    assert set(seen["tests"]) == {"failed", "schema", "guardrail", "truncation", "completion_tokens",
                                  "output_length", "latency", "ttft"}
    assert seen["tests"]["completion_tokens"] == ["pass", "5", "0", "5", "\u2013"]  # status, worse, worse, compared, odds
    assert seen["kept"] == "newest first, with their texts"
    assert seen["canary_text"].split() == HOSTILE_WORDS and not seen["injected"]  # text, never HTML
    assert "shadow 100%" in seen["stage"] and "pairs compared 5 of 20" in seen["hold"]
    assert "shadow 100%" in seen["header"]
    assert seen["errors"] == []


async def test_without_kept_outputs_the_samples_say_their_texts_are_not_kept(upstreams, make_proxy, browser):
    stable, canary = upstreams
    stable.on("POST", CHAT, words_handler(["the", "answer"]))
    canary.on("POST", CHAT, words_handler(["another", "answer"]))
    shadowing = await make_proxy(rollout=shadow_rollout())
    await chat(shadowing.data_port, user="u1")
    await eventually(lambda: shadowing.control.evidence.pairs.pairs == 1)
    page = Page(browser, shadowing.admin_port)

    def look() -> dict[str, Any]:
        page.open()
        page.until("return document.querySelectorAll('#shadow-samples details').length === 1")
        return {"kept": page.js("return document.getElementById('shadow-kept').textContent"),
                "texts": page.js("return document.querySelectorAll('#shadow-samples pre').length"),
                "summary": page.js("return document.querySelector('#shadow-samples summary').textContent")}

    seen = await asyncio.to_thread(look)
    assert seen["kept"] == "newest first; their texts are not kept (shadow.keep_outputs: false)"
    assert seen["texts"] == 0 and "texts differ (overlap 33%)" in seen["summary"]
