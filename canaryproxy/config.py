"""Configuration: YAML text -> validated, typed objects. The single hand-off is `load(path, environ)`.

Strings may reference the environment as `${NAME}` or `${NAME:-default}` (write `$${` for a literal
`${`), so secrets such as the admin token stay out of the file. The environment is passed in, not
read globally, so tests and `check-config` see exactly what they are given.

Every problem in a file is reported at once, each as `field.path: what is wrong`, and surfaces as a
`ConfigError` (exit status 2 from the CLI), never as a traceback.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from canaryproxy.core.judge import DEFAULT_TESTS, JudgeConfig
from canaryproxy.core.judge import TestConfig as JudgeTestConfig_
from canaryproxy.core.metrics import METRICS, Unit
from canaryproxy.core.rules import Comparison, Rule
from canaryproxy.core.splitter import check_weight
from canaryproxy.core.stages import Plan, Stage
from canaryproxy.core.types import Role
from canaryproxy.core.units import parse_duration, parse_size
from canaryproxy.errors import ConfigError
from canaryproxy.inspection.settings import HeaderRule, InspectionSettings, Price, PriceTable, TextRule

Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


class _Strict(BaseModel):
    # A typo in a key must be an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _parse_listen(value: object) -> tuple[str, int]:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        host, port = value
    elif isinstance(value, str):
        text = value.strip()
        match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]*):(\d+)", text)
        if not match:
            raise ValueError(f"expected host:port such as 127.0.0.1:8080 or [::1]:8080, got {value!r}")
        host = match.group(1) or match.group(3) or "0.0.0.0"
        port = match.group(2) or match.group(4)
    else:
        raise ValueError(f"expected host:port such as 127.0.0.1:8080, got {value!r}")
    port = int(port)
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be within 0-65535, got {port}")
    return str(host), port


Listen = Annotated[tuple[str, int], BeforeValidator(_parse_listen)]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AdminConfig(_Strict):
    listen: Listen = ("127.0.0.1", 9090)
    token: str | None = Field(default=None, description="bearer token for admin mutations; use ${ENV}")

    @field_validator("token")
    @classmethod
    def _empty_is_none(cls, token: str | None) -> str | None:
        # `${CANARYPROXY_ADMIN_TOKEN:-}` with the variable unset means "no token".
        return token or None


def _check_upstream_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL with a host, got {value!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"an upstream URL takes no query or fragment, got {value!r}")
    try:
        parts.port
    except ValueError as exc:
        raise ValueError(f"bad port in {value!r}: {exc}") from None
    return value.rstrip("/")


UpstreamUrl = Annotated[str, BeforeValidator(lambda v: _check_upstream_url(v) if isinstance(v, str) else v)]


class UpstreamsConfig(_Strict):
    stable: UpstreamUrl
    canary: UpstreamUrl
    # Idle pooled connections are closed after this; keep it below the upstreams' own idle timeout
    # (uvicorn, and so vLLM, closes after 5 s), or requests race their close.
    keepalive: Duration = Field(default=4.0, gt=0)


_STICKY = re.compile(r"(header|cookie|query):([!#$%&'*+.^_`|~0-9A-Za-z-]+)|client-ip")


class RoutingConfig(_Strict):
    weight: float = Field(default=0.0, ge=0.0, le=100.0)
    sticky: tuple[str, ...] = ("header:x-user-id", "cookie:session", "client-ip")
    override_header: str | None = None
    served_by_header: str | None = "x-canary-version"

    _one_bucket_resolution = field_validator("weight")(check_weight)

    @field_validator("sticky")
    @classmethod
    def _known_key_sources(cls, sources: tuple[str, ...]) -> tuple[str, ...]:
        for source in sources:
            if not _STICKY.fullmatch(source):
                raise ValueError(
                    f"unknown sticky key {source!r}: use header:NAME, cookie:NAME, query:NAME or client-ip"
                )
        return sources


class TimeoutsConfig(_Strict):
    connect: Duration = Field(default=5.0, gt=0)
    first_byte: Duration = Field(default=300.0, gt=0)
    idle: Duration = Field(default=60.0, gt=0)
    client_body: Duration = Field(default=30.0, gt=0)
    client_write: Duration = Field(default=60.0, gt=0)
    keepalive: Duration = Field(default=75.0, ge=0)
    drain: Duration = Field(default=30.0, ge=0)


class LimitsConfig(_Strict):
    max_request_body: Size = Field(default=32 * 1024**2, ge=0)
    upstream_connections: int = Field(default=1000, ge=1)


class RuleConfig(_Strict):
    """One operator rule. Exactly one comparison: above, below, above_stable or below_stable."""

    name: str = Field(min_length=1)
    metric: str
    above: float | str | None = None
    below: float | str | None = None
    above_stable: float | None = None
    below_stable: float | None = None
    window: Duration = Field(gt=0)
    for_: Duration = Field(default=0.0, alias="for", ge=0)
    min_samples: int = Field(default=20, ge=1)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_comparison(self) -> RuleConfig:
        given = [k for k in ("above", "below", "above_stable", "below_stable") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"rule {self.name!r} needs exactly one of above, below, above_stable, below_stable"
                + (f" (got {', '.join(given)})" if given else "")
            )
        self.to_rule()  # unknown metric, bad threshold: reported here, at load time
        return self

    def to_rule(self) -> Rule:
        comparison = next(k for k in ("above", "below", "above_stable", "below_stable")
                          if getattr(self, k) is not None)
        raw = getattr(self, comparison)
        if self.metric in METRICS and METRICS[self.metric].unit is Unit.SECONDS:
            threshold = parse_duration(raw)  # `above: 10s` for latency metrics
        elif isinstance(raw, str):
            try:
                threshold = float(raw)
            except ValueError:
                raise ValueError(f"rule {self.name!r}: {comparison} must be a number, got {raw!r}") from None
        else:
            threshold = float(raw)
        return Rule(self.name, self.metric, Comparison(comparison), threshold, self.window, self.for_,
                    self.min_samples)


class StageConfig(_Strict):
    weight: float = Field(gt=0, le=100)
    hold: Duration = Field(ge=0)


class JudgeTestConfig(_Strict):
    enabled: bool = True
    alpha: float | None = Field(default=None, gt=0, lt=1)
    r0: float = Field(default=1.0, ge=1.0)


class JudgeSettings(_Strict):
    """The sequential judge (see docs): on by default alongside the operator's rules."""

    enabled: bool = True
    alpha: float = Field(default=0.01, gt=0, lt=0.5)  # total false-rollback budget, split over tests
    tests: dict[str, JudgeTestConfig] = Field(default_factory=dict)
    max_events_per_key: int = Field(default=3, ge=1)
    max_samples_per_key: int = Field(default=1, ge=1)  # amount tests: samples per sticky key
    warmup: Duration = Field(default=20.0, ge=0)  # latency tests skip this long after a weight rise
    # ...and the other event tests accept a canary up to this many times worse meanwhile (x r0).
    warmup_tolerance: float = Field(default=2.0, ge=1.0, allow_inf_nan=False)
    burn_in: int = Field(default=100, ge=100)  # samples per version before an amount test may fire

    @field_validator("tests")
    @classmethod
    def _known_tests(cls, tests: dict[str, JudgeTestConfig]) -> dict[str, JudgeTestConfig]:
        unknown = sorted(set(tests) - set(DEFAULT_TESTS))
        if unknown:
            raise ValueError(f"unknown judge test {unknown[0]!r}; known tests: {', '.join(DEFAULT_TESTS)}")
        return tests

    @model_validator(mode="after")
    def _judge_accepts_it(self) -> JudgeSettings:
        # The judge checks what only it knows (r0 against its alternatives, the α sum): ask it now,
        # so a bad value is a config error naming the field, not a traceback at start-up.
        self.to_judge_config()
        return self

    def to_judge_config(self) -> JudgeConfig:
        # The default split is for a 1% budget; scale it to the configured total.
        scale = self.alpha / 0.01
        tests = {}
        for name, default in DEFAULT_TESTS.items():
            given = self.tests.get(name, JudgeTestConfig())
            tests[name] = JudgeTestConfig_(
                alpha=given.alpha if given.alpha is not None else default.alpha * scale,
                enabled=given.enabled,
                r0=given.r0,
            )
        return JudgeConfig(
            tests=tests,
            max_events_per_key=self.max_events_per_key,
            max_samples_per_key=self.max_samples_per_key,
            warmup_seconds=self.warmup,
            warmup_tolerance=self.warmup_tolerance,
            burn_in=self.burn_in,
        )


class RolloutConfig(_Strict):
    start: Literal["auto", "manual"] = "auto"
    stages: tuple[StageConfig, ...] = Field(min_length=1)
    min_requests: int = Field(default=100, ge=1)
    max_hold: Duration = Field(default=3600.0, gt=0)
    evaluate_every: Duration = Field(default=10.0, gt=0)
    rules: tuple[RuleConfig, ...] = ()
    on_stable_breach: Literal["pause", "rollback", "ignore"] = "pause"
    early_promotion: bool = False
    judge: JudgeSettings = JudgeSettings()

    @model_validator(mode="after")
    def _plan_is_consistent(self) -> RolloutConfig:
        self.to_plan()
        names = [r.name for r in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(duplicates)}")
        return self

    def to_plan(self) -> Plan:
        return Plan(
            tuple(Stage(s.weight, s.hold) for s in self.stages),
            min_requests=self.min_requests,
            max_hold=self.max_hold,
            on_stable_breach=self.on_stable_breach,
            early_promotion=self.early_promotion,
        )

    def longest_window(self) -> float:
        return max((r.window for r in self.rules), default=0.0)


class WebhookConfig(_Strict):
    url: str
    format: Literal["generic", "slack"] = "generic"
    timeout: Duration = Field(default=5.0, gt=0)
    retries: int = Field(default=3, ge=0, le=10)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
        return url


class AlertsConfig(_Strict):
    webhooks: tuple[WebhookConfig, ...] = ()


class StateConfig(_Strict):
    # Where the rollout state lives: `file` (at `path`, survives restarts) or `memory` (lost on
    # restart). Default: file when a path is given, else memory.
    backend: Literal["memory", "file"] | None = None
    path: Path | None = None  # where the rollout state survives restarts; none: memory only
    audit_log: Path | None = None  # append-only audit of admin mutations; default: beside path

    @model_validator(mode="after")
    def _backend_has_what_it_needs(self) -> StateConfig:
        if self.backend == "file" and self.path is None:
            raise ValueError("backend file needs state.path (the file the rollout state is kept in)")
        if self.backend == "memory" and self.path is not None:
            raise ValueError("backend memory keeps nothing on disk: remove state.path or use backend file")
        return self

    @property
    def backend_name(self) -> str:
        return self.backend or ("file" if self.path is not None else "memory")


class RouteSchemaConfig(_Strict):
    path: str = Field(pattern=r"^/")  # path prefix; the longest matching prefix wins
    schema_file: Path = Field(alias="schema")  # JSON Schema (draft 2020-12), relative to the config file

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class GuardrailHeaderConfig(_Strict):
    header: str = Field(min_length=1)
    value: str
    source: str = Field(pattern=r"^[a-z0-9_]+$")


class GuardrailStatusConfig(_Strict):
    status: int = Field(ge=100, le=599)
    source: str = Field(pattern=r"^[a-z0-9_]+$")


class GuardrailTextConfig(_Strict):
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    pattern: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return pattern


class GuardrailsConfig(_Strict):
    headers: tuple[GuardrailHeaderConfig, ...] = ()
    statuses: tuple[GuardrailStatusConfig, ...] = ()
    text: tuple[GuardrailTextConfig, ...] = ()


class InspectionConfig(_Strict):
    enabled: bool = True
    inject_stream_usage: bool = True
    identity_encoding: bool = True
    max_schema_bytes: Size = Field(default=256 * 1024, gt=0)
    max_json_body_bytes: Size = Field(default=8 * 1024**2, gt=0)
    routes: tuple[RouteSchemaConfig, ...] = ()
    guardrails: GuardrailsConfig = GuardrailsConfig()


class PriceConfig(_Strict):
    input: float = Field(ge=0)  # USD per million prompt tokens
    output: float = Field(ge=0)  # USD per million completion tokens


class PricingConfig(_Strict):
    models: dict[str, PriceConfig] = Field(default_factory=dict)
    versions: dict[Literal["stable", "canary"], PriceConfig] = Field(default_factory=dict)


class WindowsConfig(_Strict):
    bucket: Duration = Field(default=1.0, gt=0)
    span: Duration = Field(default=900.0, gt=0)  # raised to the longest rule window if shorter


class Config(_Strict):
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
    windows: WindowsConfig = WindowsConfig()
    inspection: InspectionConfig = InspectionConfig()
    pricing: PricingConfig = PricingConfig()

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
    def _admin_token_off_loopback(self) -> Config:
        # Anyone who can reach the admin port could send all traffic to an untested model.
        if not is_loopback(self.admin.listen[0]) and not self.admin.token:
            raise ValueError(
                f"admin.listen is {self.admin.listen[0]}, not a loopback address: set admin.token "
                "(for example token: ${CANARYPROXY_ADMIN_TOKEN})"
            )
        return self


def build_inspection_settings(config: Config, base_dir: Path) -> InspectionSettings:
    """Map the inspection and pricing sections onto the inspectors' settings, reading schema files."""
    problems: list[str] = []
    route_schemas: dict[str, Any] = {}
    for index, route in enumerate(config.inspection.routes):
        path = route.schema_file if route.schema_file.is_absolute() else base_dir / route.schema_file
        try:
            route_schemas[route.path] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"inspection.routes[{index}].schema: cannot read a JSON schema from {path}: {exc}")
    guardrails = config.inspection.guardrails
    pricing = config.pricing
    if problems:
        raise ConfigError("invalid configuration", problems)
    return InspectionSettings(
        inject_stream_usage=config.inspection.inject_stream_usage,
        max_schema_bytes=config.inspection.max_schema_bytes,
        max_json_body_bytes=config.inspection.max_json_body_bytes,
        route_schemas=route_schemas,
        header_rules=tuple(HeaderRule(h.header, h.value, h.source) for h in guardrails.headers),
        status_rules={s.status: s.source for s in guardrails.statuses},
        text_rules=tuple(TextRule(t.name, re.compile(t.pattern)) for t in guardrails.text),
        prices=PriceTable(
            models={name: Price(p.input, p.output) for name, p in pricing.models.items()},
            roles={Role(role): Price(p.input, p.output) for role, p in pricing.versions.items()},
        ),
    )


# --- loading ------------------------------------------------------------------------------------

_ENV_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: Any, environ: Mapping[str, str], path: str, problems: list[str]) -> Any:
    if isinstance(value, str):
        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            problems.append(f"{path or '(top)'}: environment variable {name} is not set")
            return ""

        return _ENV_REF.sub(substitute, value)
    if isinstance(value, dict):
        return {k: _expand(v, environ, f"{path}.{k}" if path else str(k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, environ, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    return value


def _describe(error: Mapping[str, Any]) -> str:
    location = ""
    for part in error["loc"]:
        if isinstance(part, int):
            location += f"[{part}]"
        else:
            location += f".{part}" if location else str(part)
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key (check the spelling; see config/example.yaml)"
    elif error["type"] == "missing":
        message = "required"
    elif "input" in error and not isinstance(error["input"], (dict, list)) and "got" not in message:
        message += f" (got {error['input']!r})"
    return f"{location or '(top)'}: {message}"


def parse(text: str, environ: Mapping[str, str], source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate config text. Raises ConfigError listing every problem."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from None
    if raw is None:
        raise ConfigError(f"{source}: the file is empty; see config/example.yaml")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top, got {type(raw).__name__}")
    problems: list[str] = []
    expanded = _expand(raw, environ, "", problems)
    try:
        config = Config.model_validate(expanded)
    except ValidationError as exc:
        problems += [_describe(e) for e in exc.errors()]
    if not problems and config.inspection.enabled:
        try:
            config._inspection_settings = build_inspection_settings(config, base_dir or Path("."))
        except ConfigError as exc:
            problems += exc.problems or [str(exc)]
    if problems:
        raise ConfigError(f"{source}: invalid configuration", problems)
    return config


def load(path: str | Path, environ: Mapping[str, str]) -> Config:
    """Read and validate a config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return parse(text, environ, str(path), base_dir=path.parent)
