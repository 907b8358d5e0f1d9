"""Wiring: the only place that builds the pieces (from `settings`) and starts and stops them.

`build_data_plane` makes what serves requests: the splitter, the router, the forwarder and the
exporter's totals; every finished request goes to the totals and to the outcome feed.
`build_control_plane` makes what decides: the evidence (windows and judge, fed from the outcome
feed), the rollout store, the follower that puts the stored weight in force, the controller, the
alerter and the admin API. `CanaryProxy(config)` joins the two and owns both listeners. `start()`
binds them (port 0 picks a free port, which tests use); `shutdown()` drains:

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
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry

from canaryproxy import replication, settings
from canaryproxy.admin.api import AdminAPI, AuditLog
from canaryproxy.admin.hosts import ListenerNames
from canaryproxy.alerts import Alerter
from canaryproxy.backends.memory import DirectFeed, SoleLeadership
from canaryproxy.backends.protocols import OutcomeFeed
from canaryproxy.clock import Clock, SystemClock
from canaryproxy.config import Config
from canaryproxy.control.controller import Controller
from canaryproxy.control.decisions import DecisionRecord
from canaryproxy.control.evidence import Evidence
from canaryproxy.control.follower import Follower
from canaryproxy.core.judge import DEFAULT_FEEDBACK_SETTLE, Judge
from canaryproxy.core.rules import RuleEngine
from canaryproxy.core.splitter import Splitter
from canaryproxy.core.stages import Plan, RolloutState, shadow_share
from canaryproxy.core.types import DiscardPairs, FanOutSink, Feedback, FeedbackSink, OutcomeSink
from canaryproxy.core.window import Windows
from canaryproxy.errors import StartupError
from canaryproxy.exporter import Exporter, Totals
from canaryproxy.feedback.claims import Claims, RedisClaims
from canaryproxy.feedback.endpoint import FeedbackEndpoint
from canaryproxy.feedback.memory import LocalClaims
from canaryproxy.proxy import http
from canaryproxy.proxy.edge import EdgeListener
from canaryproxy.proxy.engine.server import EngineServer
from canaryproxy.proxy.forward import Forwarder
from canaryproxy.proxy.headers import TrustedProxies
from canaryproxy.proxy.routing import Router
from canaryproxy.proxy.shadow import ShadowSender

log = logging.getLogger("canaryproxy")


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


@dataclass(slots=True)
class DataPlane:
    """What serves requests. Every finished request goes to `sink` (totals, outcome feed)."""

    splitter: Splitter
    router: Router
    forwarder: Forwarder
    totals: Totals
    feedback: FeedbackEndpoint | None = None  # None: feedback is off
    shadow: ShadowSender | None = None  # None: the plan has no shadow stage


def build_feedback(config: Config, trusted: TrustedProxies, clock: Clock,
                   shared: replication.Shared | None) -> FeedbackEndpoint | None:
    """The feedback endpoint (None when off). Its claims are shared in Redis with several
    processes; where accepted feedback goes is set by `build_control_plane`."""
    if not config.feedback.enabled:
        return None
    feedback = config.feedback.to_settings()
    claims: Claims = (RedisClaims(shared.space) if shared is not None
                      else LocalClaims(feedback.idempotency, feedback.max_age))
    return FeedbackEndpoint(feedback, trusted, claims, wall=clock.wall, monotonic=clock.monotonic)


def _delivered_to(sink: FeedbackSink) -> Callable[[Feedback], bool]:
    def deliver(feedback: Feedback) -> bool:
        sink.record_feedback(feedback)
        return True
    return deliver


def build_data_plane(config: Config, feed: OutcomeFeed, clock: Clock,
                     extra_sink: OutcomeSink | None = None,
                     shared: replication.Shared | None = None) -> DataPlane:
    splitter = Splitter(config.routing.weight)
    trusted = TrustedProxies(config.trusted_proxies)
    feedback = build_feedback(config, trusted, clock, shared)
    router = Router(splitter, config.routing.sticky, trusted, config.routing.override_header)
    totals = Totals()
    sinks: list[OutcomeSink] = [totals, feed]
    if extra_sink is not None:
        sinks.append(extra_sink)
    shadow = None
    if settings.shadows(config):
        # Its answers go to the totals (version "shadow"), never to the feed: only their pairs
        # reach the evidence (`pairs` is set by build_control_plane).
        shadow_sinks = [totals] + ([extra_sink] if extra_sink is not None else [])
        shadow = ShadowSender(settings.shadow_exchange(config), config.shadow.to_settings(),
                              config.inspection_settings(), FanOutSink(*shadow_sinks), DiscardPairs(),
                              now=clock.monotonic, wall=clock.wall)
    forwarder = Forwarder(
        settings.proxy_settings(config), router, trusted, FanOutSink(*sinks),
        inspection=config.inspection_settings(), now=clock.monotonic, wall=clock.wall, feedback=feedback,
        shadow=shadow,
    )
    return DataPlane(splitter, router, forwarder, totals, feedback, shadow)


@dataclass(slots=True)
class ControlPlane:
    """What decides: evidence, the rollout's store, follower and controller (None without a
    rollout), the alerter and the admin API."""

    evidence: Evidence
    follower: Follower | None
    controller: Controller | None
    alerter: Alerter
    admin: AdminAPI
    registry: CollectorRegistry


def build_control_plane(config: Config, data: DataPlane, feed: DirectFeed | None, clock: Clock,
                        is_ready: Callable[[], bool], shared: replication.Shared | None = None) -> ControlPlane:
    """`feed` is the one-process feed the evidence subscribes to; with `shared`, the evidence is
    fed from the shared log instead, and the store and lease are the shared ones."""
    rollout = settings.rollout_settings(config)
    judge = Judge(rollout.judge) if rollout is not None and rollout.judge is not None else None
    evidence = Evidence(Windows(settings.window_config(config)), judge,
                        feedback_settle=config.rollout.feedback_settle if config.rollout else DEFAULT_FEEDBACK_SETTLE)
    if feed is not None:
        feed.subscribe(evidence)
    if data.shadow is not None:
        data.shadow.pairs = shared.feed if shared is not None else evidence
    if data.feedback is not None:
        # One process: straight into the evidence. Several: into the shared log, from which
        # every process's evidence (the leader's among them) takes it once.
        data.feedback.deliver = (shared.feed.record_feedback if shared is not None
                                 else _delivered_to(evidence))
    alerter = Alerter(settings.webhooks(config), context={
        "upstreams": {"stable": config.upstreams.stable, "canary": config.upstreams.canary}})
    follower = controller = None
    audit = AuditLog(settings.audit_path(config))
    registry = CollectorRegistry()
    if rollout is not None:
        store = shared.store if shared is not None else settings.rollout_store(config)
        leadership = shared.leadership if shared is not None else SoleLeadership()
        follower = Follower(store, data.splitter.set_weight, clock.monotonic,
                            grace=shared.grace if shared is not None else 30.0,
                            apply_shadow=_shadow_share_of(rollout.plan, data.splitter) if data.shadow else None)
        controller = Controller(
            rollout.plan, RuleEngine(rollout.rules), evidence, store, leadership, follower,
            alerter, DecisionRecord(), clock, rollout.evaluate_every, autostart=rollout.autostart,
            shadow_tolerance=config.shadow.tolerance, shadow_negligible=config.shadow.negligible,
        )
        if data.shadow is not None:
            sender, splitter = data.shadow, data.splitter
            controller.shadow_local = lambda: {**sender.view(), "share_in_force": splitter.shadow}
        if shared is not None:
            replication.join(shared, evidence, controller, clock)
            audit.publish = lambda entry: shared.history.publish("audit", entry)
            registry.register(replication.CoordinationCollector(shared, follower))
    exchanges = data.forwarder.exchanges
    registry.register(Exporter(data.totals, lambda: data.splitter.weight,
                               controller.readout if controller is not None else None,
                               retries=lambda: {role: e.retries for role, e in exchanges.items()},
                               feedback=data.feedback.counters if data.feedback is not None else None,
                               shadow=data.shadow))
    admin = AdminAPI(
        controller, registry, is_ready, lambda: data.splitter.weight, data.splitter.set_weight,
        config.admin.token, audit, evidence.windows, clock,
        ListenerNames(config.admin.listen[0], config.admin.allowed_hosts),
    )
    return ControlPlane(evidence, follower, controller, alerter, admin, registry)


def _shadow_share_of(plan: Plan, splitter: Splitter) -> Callable[[RolloutState | None], None]:
    """Puts a stored state's shadow share in force (None: the store is away too long: no copies)."""
    def apply(state: RolloutState | None) -> None:
        splitter.set_shadow(0.0 if state is None else shadow_share(state, plan))
    return apply


class CanaryProxy:
    def __init__(self, config: Config, *, clock: Clock | None = None, sink: OutcomeSink | None = None,
                 reuse_port: bool = False) -> None:
        self.config = config
        self.reuse_port = reuse_port  # a worker of `run --workers N`: the data port is shared
        self.clock = clock or SystemClock()
        self.shared: replication.Shared | None = None
        if config.coordination.shared:
            self.shared = replication.shared_backend(config, settings.window_config(config).span_seconds)
            self.data = build_data_plane(config, self.shared.feed, self.clock, sink, self.shared)
            self.control = build_control_plane(config, self.data, None, self.clock, self.is_ready, self.shared)
        else:
            feed = DirectFeed()
            self.data = build_data_plane(config, feed, self.clock, sink)
            self.control = build_control_plane(config, self.data, feed, self.clock, self.is_ready)
        self._listener: EngineServer | EdgeListener | None = None
        self._listening = False
        self._admin_runner: web.AppRunner | None = None
        self.data_port = 0
        self.admin_port = 0
        self._stopped = asyncio.Event()

    # The parts tests and the demo look at.
    @property
    def forwarder(self) -> Forwarder:
        return self.data.forwarder

    @property
    def controller(self) -> Controller | None:
        return self.control.controller

    @property
    def windows(self) -> Windows:
        return self.control.evidence.windows

    @property
    def registry(self) -> CollectorRegistry:
        return self.control.registry

    def set_weight(self, weight: float) -> None:
        """Change the canary weight of a fixed split; applies to the next request."""
        self.data.splitter.set_weight(weight)

    @property
    def weight(self) -> float:
        return self.data.splitter.weight

    def is_ready(self) -> bool:
        return self._listening and not self.data.forwarder.draining

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        require_c_parser()
        config = self.config
        await self.forwarder.start()
        control = self.control

        # The data plane's HTTP server (proxy/engine/): refusing what llhttp lets through,
        # logging client-caused errors as one rate-limited line.
        self._listener = _data_listener(self.forwarder, keepalive_timeout=config.timeouts.keepalive,
                                        head_timeout=config.timeouts.client_header)

        await control.alerter.start()
        if control.follower is not None and control.controller is not None:
            await control.follower.start()
            if self.shared is not None:
                await replication.start(self.shared, control.controller)
            await control.controller.boot()
            await control.controller.start()
            if self.shared is not None:
                await replication.lead(self.shared)
        self._admin_runner = web.AppRunner(control.admin.application(), handle_signals=False, access_log=None)
        await self._admin_runner.setup()

        try:
            self.data_port = await self._listener.start(*config.listen, backlog=1024,
                                                        reuse_port=self.reuse_port)
            self._listening = True
            admin_site = web.TCPSite(self._admin_runner, *config.admin.listen)
            await admin_site.start()
        except OSError as exc:
            await self._cleanup()
            raise StartupError(f"cannot listen: {exc}") from None
        self.admin_port = _bound_port(admin_site)
        log.info(
            "canaryproxy listening on %s:%d (admin %s:%d); stable=%s canary=%s weight=%g%%",
            config.listen[0], self.data_port, config.admin.listen[0], self.admin_port,
            config.upstreams.stable, config.upstreams.canary, self.weight,
        )

    async def shutdown(self) -> None:
        """Drain and stop (idempotent)."""
        if self._listener is None:
            return
        drain = self.config.timeouts.drain
        self.forwarder.begin_drain()
        self._listening = False
        self._listener.drain()  # stop accepting; close idle keep-alive connections now
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
        control = self.control
        if control.controller is not None:
            await control.controller.stop()
        if control.follower is not None:
            await control.follower.stop()
        if self.shared is not None:
            await replication.stop(self.shared)  # flushes what is left, releases the lease
        if self._listener is not None:
            await self._listener.shutdown()
            self._listener = None
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
            self._admin_runner = None
        await self.forwarder.close()
        await control.alerter.close()

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, then drain and return."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
            log.info("signal received: draining")
            _exit_if_stuck(self.config.timeouts.drain + SHUTDOWN_SLACK)
            await self.shutdown()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)


SHUTDOWN_SLACK = 10.0  # seconds a shutdown may take beyond the drain window


def _exit_if_stuck(after: float) -> None:
    """A shutdown that outlives the drain window by SHUTDOWN_SLACK ends the process anyway: an
    orchestrator waits for it, and a stuck close (a peer that never answers) must not hold it."""
    import os
    import threading

    def exit_now() -> None:
        log.error("shutdown still not done %gs after the signal: exiting", after)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(after, exit_now)
    timer.daemon = True
    timer.start()


def _data_listener(handler: Forwarder, *, keepalive_timeout: float,
                   head_timeout: float) -> EngineServer | EdgeListener:
    """The llhttp engine, or aiohttp's server while the differential test still compares them."""
    if http.ENGINE == "aiohttp":
        return EdgeListener(handler, keepalive_timeout=keepalive_timeout, head_timeout=head_timeout)
    return EngineServer(handler, keepalive_timeout=keepalive_timeout, head_timeout=head_timeout)


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp exposes the bound port only through the asyncio server
    assert server is not None and server.sockets
    return server.sockets[0].getsockname()[1]
