"""The backends under test. Each entry builds, for one test, a shared space and from it stores and
leaderships that act as separate processes would. A shared backend (Redis) joins by adding an
entry; the contract in test_contract.py then holds it to the same promises."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from canaryproxy.backends.file import FileRolloutStore
from canaryproxy.backends.memory import MemoryLeadership, MemoryRolloutStore, MemorySpace
from canaryproxy.backends.protocols import Leadership, RolloutStore
from canaryproxy.clock import ManualClock


@dataclass
class Backend:
    name: str
    clock: ManualClock
    store: Callable[[], RolloutStore]  # another process's view of the same stored state
    leadership: Callable[[str, float], Leadership] | None  # None: one process always leads
    corrupt: Callable[[], None]  # make the stored state unreadable, as a crash or FLUSHALL would


def memory_backend(tmp_path: Path) -> Backend:
    clock = ManualClock()
    space = MemorySpace(clock)

    def corrupt() -> None:
        space.unreadable = "the stored state was lost"

    return Backend("memory", clock, lambda: MemoryRolloutStore(space),
                   lambda holder, lease: MemoryLeadership(space, holder, lease), corrupt)


def file_backend(tmp_path: Path) -> Backend:
    path = tmp_path / "state.json"
    stores: list[FileRolloutStore] = []

    def store() -> FileRolloutStore:
        # One process per file: every "process" of a test shares that one store.
        if not stores:
            stores.append(FileRolloutStore(path))
        return stores[0]

    def corrupt() -> None:
        path.write_text("{not json")
        stores.clear()

    return Backend("file", ManualClock(), store, None, corrupt)


BACKENDS: dict[str, Callable[[Path], Any]] = {"memory": memory_backend, "file": file_backend}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return BACKENDS[request.param](tmp_path)
