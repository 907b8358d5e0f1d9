"""`Config`, the whole file: one field per top-level section, each section a class of its own (in
serving.py, rollout.py, operations.py, inspection.py), so a new section is one class and one line."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import PrivateAttr, field_validator, model_validator

from canaryproxy.config.coordination import CoordinationConfig
from canaryproxy.config.feedback import FeedbackConfig
from canaryproxy.config.fields import Listen, Strict, is_loopback
from canaryproxy.config.inspection import InspectionConfig, PricingConfig, build_inspection_settings
from canaryproxy.config.operations import AlertsConfig, StateConfig, WindowsConfig
from canaryproxy.config.rollout import RolloutConfig
from canaryproxy.config.shadow import ShadowConfig
from canaryproxy.core.units import format_duration
from canaryproxy.config.serving import AdminConfig, LimitsConfig, RoutingConfig, TimeoutsConfig, UpstreamsConfig
from canaryproxy.inspection.settings import InspectionSettings


class Config(Strict):
    listen: Listen = ("0.0.0.0", 8080)
    admin: AdminConfig = AdminConfig()
    upstreams: UpstreamsConfig
    routing: RoutingConfig = RoutingConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    limits: LimitsConfig = LimitsConfig()
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    access_log: bool = True
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    rollout: RolloutConfig | None = None
    alerts: AlertsConfig = AlertsConfig()
    state: StateConfig = StateConfig()
    coordination: CoordinationConfig = CoordinationConfig()
    windows: WindowsConfig = WindowsConfig()
    inspection: InspectionConfig = InspectionConfig()
    pricing: PricingConfig = PricingConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    shadow: ShadowConfig = ShadowConfig()

    _inspection_settings: InspectionSettings | None = PrivateAttr(default=None)

    def inspection_settings(self) -> InspectionSettings | None:
        """What the inspectors are told (None when inspection is off)."""
        if not self.inspection.enabled:
            return None
        if self._inspection_settings is None:
            self._inspection_settings = build_inspection_settings(self, Path("."))
        return self._inspection_settings

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if isinstance(value, list):
            nets = []
            for item in value:
                try:
                    nets.append(ipaddress.ip_network(str(item), strict=False))
                except ValueError:
                    raise ValueError(f"expected CIDRs such as 10.0.0.0/8, got {item!r}") from None
            return tuple(nets)
        return value

    @model_validator(mode="after")
    def _one_place_for_the_state(self) -> Config:
        if self.coordination.shared and self.rollout is None:
            raise ValueError("coordination.backend redis shares a rollout: add a rollout section")
        if self.coordination.shared and self.state.backend is not None:
            raise ValueError(
                f"state.backend is {self.state.backend} but coordination.backend is redis, which keeps "
                "the rollout state in Redis: remove state.backend (state.path still names the audit log's folder)")
        return self

    @model_validator(mode="after")
    def _stages_fit_feedback_settle(self) -> Config:
        if self.rollout is None or not self.feedback.enabled:
            return self
        longest = max(s.hold for s in self.rollout.stages) + self.rollout.feedback_settle
        if longest > self.rollout.max_hold:
            raise ValueError(
                f"rollout.max_hold ({format_duration(self.rollout.max_hold)}) is shorter than the longest "
                f"stage hold plus rollout.feedback_settle ({format_duration(longest)}): with feedback on, "
                "a stage lasts its hold plus the settle time; raise max_hold")
        return self

    @model_validator(mode="after")
    def _admin_token_off_loopback(self) -> Config:
        # Anyone who can reach the admin port could send all traffic to an untested model.
        if not is_loopback(self.admin.listen[0]) and not self.admin.token:
            raise ValueError(
                f"admin.listen is {self.admin.listen[0]}, not a loopback address: set admin.token "
                "(for example token: ${CANARYPROXY_ADMIN_TOKEN})"
            )
        return self


