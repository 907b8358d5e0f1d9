"""From a validated `Config` to the runtime objects the server wires together, in one place.

config.py parses and validates text (a section may build a core value to validate it, e.g. a
`Plan`); everything the running proxy is made of is built here, once, from the config alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from canaryproxy.alerts import Webhook
from canaryproxy.backends.file import FileRolloutStore
from canaryproxy.backends.memory import MemoryRolloutStore
from canaryproxy.backends.protocols import RolloutStore
from canaryproxy.config import Config
from canaryproxy.control.evidence import LATENCY_BASELINE_SPAN
from canaryproxy.core.judge import JudgeConfig
from canaryproxy.core.rules import Rule
from canaryproxy.core.stages import Plan
from canaryproxy.core.types import Role
from canaryproxy.core.window import WindowConfig
from canaryproxy.proxy.exchange import Deadlines, Exchange
from canaryproxy.proxy.forward import ProxySettings


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
        upstream_keepalive=config.upstreams.keepalive,
        served_by_header=config.routing.served_by_header,
        access_log=config.access_log,
        identity_encoding=config.inspection.identity_encoding,
    )


def shadows(config: Config) -> bool:
    """Whether the plan has shadow stages (the data plane then gets a shadow sender)."""
    return config.rollout is not None and any(s.shadow is not None for s in config.rollout.stages)


def shadow_exchange(config: Config) -> Exchange:
    """The canary's pool for shadow copies: apart from the live one, so a canary slow on copies
    never takes the connections users wait for; the live deadlines, so a failure means the same;
    never a retry."""
    t = config.timeouts
    return Exchange(Role.SHADOW, config.upstreams.canary, Deadlines(t.connect, t.first_byte, t.idle),
                    connections=config.shadow.max_in_flight, keepalive=config.upstreams.keepalive, retry=False)


def window_config(config: Config) -> WindowConfig:
    """Windows long enough for every rule and for the judge's latency baseline."""
    longest = config.rollout.longest_window() if config.rollout else 0.0
    span = max(config.windows.span, longest, LATENCY_BASELINE_SPAN)
    return WindowConfig(bucket_seconds=config.windows.bucket, span_seconds=span)


@dataclass(frozen=True, slots=True)
class RolloutSettings:
    plan: Plan
    rules: tuple[Rule, ...]
    judge: JudgeConfig | None  # None: the judge is off
    evaluate_every: float
    autostart: bool


def rollout_settings(config: Config) -> RolloutSettings | None:
    rollout = config.rollout
    if rollout is None:
        return None
    return RolloutSettings(
        plan=rollout.to_plan(feedback=config.feedback.enabled),
        rules=tuple(r.to_rule() for r in rollout.rules),
        # The feedback tests run when the proxy takes feedback; without it nothing of them shows.
        judge=rollout.judge.to_judge_config(config.feedback.enabled, rollout.feedback_settle)
        if rollout.judge.enabled else None,
        evaluate_every=rollout.evaluate_every,
        autostart=rollout.start == "auto",
    )


# The rollout stores by the name `state.backend` gives them (config.py accepts only these names).
STORES = {
    "memory": lambda config: MemoryRolloutStore(),
    "file": lambda config: FileRolloutStore(config.state.path),
}


def rollout_store(config: Config) -> RolloutStore:
    store: RolloutStore = STORES[config.state.backend_name](config)
    return store


def audit_path(config: Config) -> Path | None:
    if config.state.audit_log:
        return config.state.audit_log
    if config.state.path:
        return config.state.path.parent / "audit.jsonl"
    return None


def webhooks(config: Config) -> list[Webhook]:
    return [Webhook(w.url, w.format, w.timeout, w.retries) for w in config.alerts.webhooks]
