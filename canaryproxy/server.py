"""Wiring: the only place that builds the pieces from a Config and starts and stops them.

`CanaryProxy(config)` owns the data-plane listener, the admin listener and everything behind them.
`start()` binds both (port 0 picks a free port, which tests use); `shutdown()` drains:

1. readiness fails and requests that still arrive on kept-alive connections get 503 + Retry-After;
2. the data listener closes and idle keep-alive connections are closed;
3. in-flight requests and streams get `timeouts.drain` to finish;
4. the rest are aborted (a client sees a truncation, not a clean end), then the admin listener
   closes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from aiohttp import web

from prometheus_client import CollectorRegistry

from canaryproxy.admin.api import AdminAPI, AuditLog
from canaryproxy.alerts import Alerter, Webhook
from canaryproxy.clock import Clock, SystemClock
from canaryproxy.config import Config
from canaryproxy.control.controller import LATENCY_BASELINE_SPAN, Controller
from canaryproxy.core.judge import Judge
from canaryproxy.core.rules import RuleEngine
from canaryproxy.core.splitter import Splitter
from canaryproxy.core.types import Role, FanOutSink, Outcome, OutcomeSink
from canaryproxy.core.window import WindowConfig, Windows
from canaryproxy.errors import StartupError
from canaryproxy.exporter import Exporter, Totals
from canaryproxy.proxy.forward import Forwarder, ProxySettings
from canaryproxy.proxy.headers import TrustedProxies
from canaryproxy.proxy.routing import Router
from canaryproxy.backends.state import FileStateStore, MemoryStateStore, StateStore

log = logging.getLogger("canaryproxy")


class QuietMalformedRequests(logging.Filter):
    """aiohttp logs every malformed request as an ERROR with a traceback. At a proxy's front door
    they are routine (scanners, broken clients) and already answered with 400: log one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        if record.exc_info and isinstance(record.exc_info[1], HttpProcessingError):
            error = record.exc_info[1]
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "rejected a malformed request: %s", (
                str(getattr(error, "message", error)).strip().splitlines()[0],)
            record.exc_info = None
            record.exc_text = None
        return True


_quiet_filter = QuietMalformedRequests()


def require_c_parser() -> None:
    """Refuse to run on aiohttp's pure-Python HTTP parser: it accepts request framings
    (`Transfer-Encoding: chunked, chunked`) that HAProxy rejects, a smuggling risk."""
    from aiohttp import http_parser

    if http_parser.HttpRequestParser is http_parser.HttpRequestParserPy:
        raise StartupError(
            "aiohttp is using its pure-Python HTTP parser (AIOHTTP_NO_EXTENSIONS is set, or the C "
            "extension is missing): it accepts malformed framing that a proxy must reject. Install "
            "an aiohttp wheel with its C extensions and unset AIOHTTP_NO_EXTENSIONS."
        )


def proxy_settings(config: Config) -> ProxySettings:
    t = config.timeouts
    return ProxySettings(
        upstreams={Role.STABLE: config.upstreams.stable, Role.CANARY: config.upstreams.canary},
        connect_timeout=t.connect,
        first_byte_timeout=t.first_byte,
        idle_timeout=t.idle,
        client_body_timeout=t.client_body,
        client_write_timeout=t.client_write,
        max_request_body=config.limits.max_request_body,
        upstream_connections=config.limits.upstream_connections,
        served_by_header=config.routing.served_by_header,
        access_log=config.access_log,
        identity_encoding=config.inspection.identity_encoding,
    )


class WindowRecorder:
    """OutcomeSink that files each outcome in the windows at the time it finished."""

    __slots__ = ("_windows",)

    def __init__(self, windows: Windows) -> None:
        self._windows = windows

    def record(self, outcome: Outcome) -> None:
        self._windows.record(outcome, outcome.started + outcome.latency)


def window_config(config: Config) -> WindowConfig:
    longest = config.rollout.longest_window() if config.rollout else 0.0
    span = max(config.windows.span, longest, LATENCY_BASELINE_SPAN)
    return WindowConfig(bucket_seconds=config.windows.bucket, span_seconds=span)


def state_store(config: Config) -> StateStore:
    return FileStateStore(config.state.path) if config.state.path else MemoryStateStore()


def audit_path(config: Config) -> Path | None:
    if config.state.audit_log:
        return config.state.audit_log
    if config.state.path:
        return config.state.path.parent / "audit.jsonl"
    return None


class CanaryProxy:
    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        sink: OutcomeSink | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.splitter = Splitter(config.routing.weight)
        trusted = TrustedProxies(config.trusted_proxies)
        self.router = Router(
            self.splitter, config.routing.sticky, trusted, config.routing.override_header
        )
        self.windows = Windows(window_config(config))
        self.totals = Totals()
        self.alerter = Alerter(
            [Webhook(w.url, w.format, w.timeout, w.retries) for w in config.alerts.webhooks],
            context={"upstreams": {"stable": config.upstreams.stable, "canary": config.upstreams.canary}},
        )
        self.controller: Controller | None = None
        if config.rollout is not None:
            rollout = config.rollout
            self.controller = Controller(
                rollout.to_plan(),
                RuleEngine([r.to_rule() for r in rollout.rules]),
                Judge(rollout.judge.to_judge_config()) if rollout.judge.enabled else None,
                self.windows,
                state_store(config),
                self.alerter,
                self.set_weight,
                self.clock,
                rollout.evaluate_every,
                autostart=rollout.start == "auto",
            )
        sinks: list[OutcomeSink] = [WindowRecorder(self.windows), self.totals]
        if self.controller is not None:
            sinks.append(self.controller)
        if sink is not None:
            sinks.append(sink)
        self.registry = CollectorRegistry()
        self.registry.register(
            Exporter(self.totals, lambda: self.weight,
                     self.controller.metrics if self.controller is not None else None)
        )
        self.forwarder = Forwarder(
            proxy_settings(config),
            self.router,
            trusted,
            FanOutSink(*sinks),
            inspection=config.inspection_settings(),
            now=self.clock.monotonic,
            wall=self.clock.wall,
        )
        self.admin = AdminAPI(
            self.controller, self.registry, self.is_ready, lambda: self.weight, self.set_weight,
            config.admin.token, AuditLog(audit_path(config)), self.windows, self.clock,
        )
        self._data_runner: web.ServerRunner | None = None
        self._admin_runner: web.AppRunner | None = None
        self._data_site: web.TCPSite | None = None
        self.data_port = 0
        self.admin_port = 0
        self._stopped = asyncio.Event()

    # --- what the admin API and the controller call --------------------------------------------

    def set_weight(self, weight: float) -> None:
        """Change the canary weight; applies to the next request."""
        self.splitter.set_weight(weight)

    @property
    def weight(self) -> float:
        return self.splitter.weight

    def is_ready(self) -> bool:
        return self._data_site is not None and not self.forwarder.draining

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        require_c_parser()
        logging.getLogger("aiohttp.server").addFilter(_quiet_filter)
        config = self.config
        await self.forwarder.start()

        server = web.Server(
            self.forwarder,
            # A client that leaves must cancel its upstream request at once, not at the next write.
            handler_cancellation=True,
            keepalive_timeout=config.timeouts.keepalive,
            access_log=None,
        )
        self._data_runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=0.5)
        await self._data_runner.setup()

        await self.alerter.start()
        if self.controller is not None:
            self.controller.boot()
            await self.controller.start()
        self._admin_runner = web.AppRunner(self.admin.application(), handle_signals=False, access_log=None)
        await self._admin_runner.setup()

        try:
            site = web.TCPSite(self._data_runner, *config.listen, backlog=1024)
            await site.start()
            self._data_site = site
            admin_site = web.TCPSite(self._admin_runner, *config.admin.listen)
            await admin_site.start()
        except OSError as exc:
            await self._cleanup()
            raise StartupError(f"cannot listen: {exc}") from None
        self.data_port = _bound_port(site)
        self.admin_port = _bound_port(admin_site)
        log.info(
            "canaryproxy listening on %s:%d (admin %s:%d); stable=%s canary=%s weight=%g%%",
            config.listen[0], self.data_port, config.admin.listen[0], self.admin_port,
            config.upstreams.stable, config.upstreams.canary, self.weight,
        )

    async def shutdown(self) -> None:
        """Drain and stop (idempotent)."""
        if self._data_runner is None:
            return
        drain = self.config.timeouts.drain
        self.forwarder.begin_drain()
        if self._data_site is not None:
            await self._data_site.stop()
            self._data_site = None
        server = self._data_runner.server
        if server is not None:
            server.pre_shutdown()  # close idle keep-alive connections now
        in_flight = self.forwarder.in_flight
        if in_flight:
            log.info("draining %d in-flight requests for up to %gs", in_flight, drain)
            if not await self.forwarder.wait_drained(drain):
                log.warning(
                    "drain window of %gs ended with %d requests in flight; aborting them",
                    drain, self.forwarder.in_flight,
                )
        await self._cleanup()
        self._stopped.set()

    async def _cleanup(self) -> None:
        if self.controller is not None:
            await self.controller.stop()
        if self._data_runner is not None:
            await self._data_runner.cleanup()
            self._data_runner = None
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
            self._admin_runner = None
        await self.forwarder.close()
        await self.alerter.close()

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, then drain and return."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
            log.info("signal received: draining")
            await self.shutdown()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp exposes the bound port only through the asyncio server
    assert server is not None and server.sockets
    return server.sockets[0].getsockname()[1]
