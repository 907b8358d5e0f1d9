"""The rollout state in a JSON file, for one process: where the rollout is survives a restart or
a `kill -9`.

The file is written atomically (temp file in the same directory, fsync, rename, fsync of the
directory), so a crash leaves either the old or the new state, never half of one. The process's
memory is the truth while it runs (a `MemoryRolloutStore` underneath): compare-and-set is checked
there, and a file that cannot be written leaves the new state in force and raises `NotDurable`,
so the rollout goes on and the operator is told.

Loading distinguishes three cases, because they call for different actions:
* no file: a fresh start from the config (`load()` returns None);
* a valid file: resume where it stopped;
* an unreadable or corrupt file: `StateError`; the controller then fails safe (canary weight 0,
  paused, alert) — never 100, never a silent reset — and its fail-safe state replaces the file.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from canaryproxy.backends.memory import MemoryRolloutStore
from canaryproxy.core.stages import RolloutState
from canaryproxy.errors import NotDurable, StateError

FORMAT_VERSION = 1


class FileRolloutStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._memory = MemoryRolloutStore()
        self._loaded = False

    def describe(self) -> str:
        return str(self.path)

    async def load(self) -> RolloutState | None:
        if not self._loaded:
            self._loaded = True
            try:
                state = read_state_file(self.path)
            except StateError as exc:
                self._memory.space.unreadable = str(exc)
                raise
            if state is not None:
                self._memory.space.state = state
        return await self._memory.load()

    async def compare_and_set(self, state: RolloutState, expected: int | None, token: int | None) -> None:
        if not self._loaded:
            try:  # the generation to compare with is the file's
                await self.load()
            except StateError:
                pass  # unreadable: only a writer that saw no readable state (expected None) may replace it
        await self._memory.compare_and_set(state, expected, token)
        try:
            write_state_file(self.path, state, time.time())
        except StateError as exc:
            raise NotDurable(str(exc)) from None

    def watch(self) -> AsyncIterator[RolloutState]:
        return self._memory.watch()


def read_state_file(path: Path) -> RolloutState | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(f"state file {path} is unreadable: {exc}") from None
    try:
        document: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateError(f"state file {path} is corrupt: not JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT_VERSION:
        raise StateError(
            f"state file {path} is corrupt or from another version: expected a mapping "
            f"with format {FORMAT_VERSION}"
        )
    try:
        return RolloutState.from_dict(document.get("rollout"))
    except ValueError as exc:
        raise StateError(f"state file {path} is corrupt: {exc}") from None


def write_state_file(path: Path, state: RolloutState, wall_time: float) -> None:
    document = {"format": FORMAT_VERSION, "saved_at": wall_time, "rollout": state.to_dict()}
    data = json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as temp:
                temp.write(data)
                temp.flush()
                os.fsync(temp.fileno())
            os.replace(temp_name, path)
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
        raise StateError(f"cannot write state file {path}: {exc}") from None
