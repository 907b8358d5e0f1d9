"""The backends under test. Each entry builds, for one test, a shared space and from it stores and
leaderships that act as separate processes would. A shared backend (Redis) joins by adding an
entry; the contract in test_contract.py then holds it to the same promises."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from canaryproxy.backends.file import FileRolloutStore
from canaryproxy.backends.memory import MemoryLeadership, MemoryRolloutStore, MemorySpace
from canaryproxy.backends.protocols import Leadership, RolloutStore
from canaryproxy.backends.redis import RedisLeadership, RedisRolloutStore, RedisSpace
from canaryproxy.clock import ManualClock
from tests.redis_server import RedisServer


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


class ManualRedisClock(ManualClock):
    """Redis keeps lease time itself: a test moves it by waiting, so leases in the Redis tests
    are short and `advance` sleeps for real (still bounded: a few hundred milliseconds)."""

    def advance(self, seconds: float) -> None:
        time.sleep(seconds * REDIS_TIME_SCALE)
        super().advance(seconds)


REDIS_TIME_SCALE = 0.02  # one test second is 20 ms of Redis time


def redis_backend(tmp_path: Path) -> Backend:
    server = RedisServer(tmp_path / "redis")
    server.start()
    spaces: list[RedisSpace] = []

    def space() -> RedisSpace:
        spaces.append(RedisSpace(server.url, "contract"))
        return spaces[-1]

    def corrupt() -> None:
        import redis

        redis.Redis.from_url(server.url).set("canaryproxy:{contract}:state", b"{not json")

    backend = Backend("redis", ManualRedisClock(), lambda: RedisRolloutStore(space(), poll=0.2),
                      lambda holder, lease: RedisLeadership(space(), holder, lease * REDIS_TIME_SCALE),
                      corrupt)
    backend.cleanup = lambda: (server.stop(), spaces)  # type: ignore[attr-defined]
    return backend


BACKENDS: dict[str, Callable[[Path], Any]] = {"memory": memory_backend, "file": file_backend,
                                              "redis": redis_backend}


@pytest.fixture(params=sorted(BACKENDS))
async def backend(request: pytest.FixtureRequest, tmp_path: Path):
    made = BACKENDS[request.param](tmp_path)
    yield made
    cleanup = getattr(made, "cleanup", None)
    if cleanup is not None:
        _, spaces = cleanup()
        for space in spaces:
            await space.close()
