"""The operations sections: alerts (webhooks), where the rollout state is kept, the metric windows."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from canaryproxy.config.fields import Duration, Strict


class WebhookConfig(Strict):
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


class AlertsConfig(Strict):
    webhooks: tuple[WebhookConfig, ...] = ()


class StateConfig(Strict):
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


class WindowsConfig(Strict):
    bucket: Duration = Field(default=1.0, gt=0)
    span: Duration = Field(default=900.0, gt=0)  # raised to the longest rule window if shorter


