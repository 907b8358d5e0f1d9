"""Durable rollout state: where the rollout is survives a restart (or a `kill -9`).

`StateStore` is the small interface a shared backend (Redis, for several replicas) will implement;
`FileStateStore` is the default: one JSON document written atomically (temp file in the same
directory, fsync, rename, fsync of the directory), so a crash leaves either the old or the new
state, never half of one.

Loading distinguishes three cases, because they call for different actions:
* no file: a fresh start from the config (`load()` returns None);
* a valid file: resume where it stopped;
* an unreadable or corrupt file: `StateError`; the controller then fails safe (canary weight 0,
  paused, alert) — never 100, never a silent reset.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from canaryproxy.core.stages import RolloutState
from canaryproxy.errors import StateError

FORMAT_VERSION = 1


class StateStore(Protocol):
    def load(self) -> RolloutState | None: ...

    def save(self, state: RolloutState, wall_time: float) -> None: ...

    def describe(self) -> str: ...


class MemoryStateStore:
    """No durability: for a proxy run without `state.path`, and as the simplest reference."""

    def __init__(self) -> None:
        self._state: RolloutState | None = None

    def load(self) -> RolloutState | None:
        return self._state

    def save(self, state: RolloutState, wall_time: float) -> None:
        self._state = state

    def describe(self) -> str:
        return "memory (not durable)"


class FileStateStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def describe(self) -> str:
        return str(self.path)

    def load(self) -> RolloutState | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise StateError(f"state file {self.path} is unreadable: {exc}") from None
        try:
            document: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StateError(f"state file {self.path} is corrupt: not JSON ({exc})") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT_VERSION:
            raise StateError(
                f"state file {self.path} is corrupt or from another version: expected a mapping "
                f"with format {FORMAT_VERSION}"
            )
        try:
            return RolloutState.from_dict(document.get("rollout"))
        except ValueError as exc:
            raise StateError(f"state file {self.path} is corrupt: {exc}") from None

    def save(self, state: RolloutState, wall_time: float) -> None:
        document = {"format": FORMAT_VERSION, "saved_at": wall_time, "rollout": state.to_dict()}
        data = json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, temp_name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
            try:
                with os.fdopen(fd, "wb") as temp:
                    temp.write(data)
                    temp.flush()
                    os.fsync(temp.fileno())
                os.replace(temp_name, self.path)
            except BaseException:
                Path(temp_name).unlink(missing_ok=True)
                raise
            # The rename is durable only once the directory entry is on disk.
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise StateError(f"cannot write state file {self.path}: {exc}") from None
