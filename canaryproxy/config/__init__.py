"""Configuration: YAML text -> validated, typed objects. The single hand-off is `load(path, environ)`.

Every problem in a file is reported at once, each as `field.path: what is wrong`, and surfaces as a
`ConfigError` (exit status 2 from the CLI), never as a traceback.

The package: `fields` (shared value types), one module per group of sections (`serving`, `rollout`,
`operations`, `inspection`), `root` (`Config`, one field per section), `loading` (YAML, environment
substitution, `parse`/`load`), `problems` (validation errors as lines). Everything is re-exported
here, so `from canaryproxy.config import Config, load` is the one way in.
"""

from canaryproxy.config.coordination import CoordinationConfig
from canaryproxy.config.fields import Duration, Listen, Size, UpstreamUrl, is_loopback
from canaryproxy.config.inspection import (
    GuardrailHeaderConfig,
    GuardrailsConfig,
    GuardrailStatusConfig,
    GuardrailTextConfig,
    InspectionConfig,
    PriceConfig,
    PricingConfig,
    RouteSchemaConfig,
    build_inspection_settings,
)
from canaryproxy.config.loading import load, parse
from canaryproxy.config.operations import AlertsConfig, StateConfig, WebhookConfig, WindowsConfig
from canaryproxy.config.rollout import JudgeSettings, JudgeTestConfig, RolloutConfig, RuleConfig, StageConfig
from canaryproxy.config.root import Config
from canaryproxy.config.serving import AdminConfig, LimitsConfig, RoutingConfig, TimeoutsConfig, UpstreamsConfig

__all__ = [
    "AdminConfig", "AlertsConfig", "Config", "CoordinationConfig", "Duration", "GuardrailHeaderConfig", "GuardrailStatusConfig",
    "GuardrailTextConfig", "GuardrailsConfig", "InspectionConfig", "JudgeSettings", "JudgeTestConfig",
    "LimitsConfig", "Listen", "PriceConfig", "PricingConfig", "RolloutConfig", "RouteSchemaConfig",
    "RoutingConfig", "RuleConfig", "Size", "StageConfig", "StateConfig", "TimeoutsConfig", "UpstreamUrl",
    "UpstreamsConfig", "WebhookConfig", "WindowsConfig", "build_inspection_settings", "is_loopback", "load",
    "parse",
]
