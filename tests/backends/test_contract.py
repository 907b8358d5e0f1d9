"""One contract for every backend: compare-and-set, watch, leadership and fencing."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from canaryproxy.core.stages import Phase, RolloutState
from canaryproxy.errors import Fenced, NotDurable, StateConflict, StateError
from tests.backends.conftest import Backend


def progressing(generation: int, weight: float = 5.0, elapsed: float = 0.0) -> RolloutState:
    return RolloutState(phase=Phase.PROGRESSING, weight=weight, generation=generation, stage_elapsed=elapsed)


async def test_a_fresh_store_holds_nothing_and_takes_a_first_state_only_once(backend: Backend):
    store = backend.store()
    assert await store.load() is None
    await store.compare_and_set(progressing(1), expected=None, token=None)
    assert (await store.load()).to_dict() == progressing(1).to_dict()
    with pytest.raises(StateConflict) as refused:
        await backend.store().compare_and_set(progressing(1, weight=50), expected=None, token=None)
    assert refused.value.stored_generation == 1
    assert (await store.load()).weight == 5.0


async def test_a_write_from_a_stale_read_is_refused_and_changes_nothing(backend: Backend):
    a, b = backend.store(), backend.store()
    await a.compare_and_set(progressing(1), None, None)
    await b.compare_and_set(progressing(2, weight=25), expected=1, token=None)  # b wins
    with pytest.raises(StateConflict, match="generation 2, not 1"):
        await a.compare_and_set(progressing(2, weight=50), expected=1, token=None)
    assert (await a.load()).weight == 25.0
    # Progress within a generation is written on the generation it was read at.
    await a.compare_and_set(progressing(2, weight=25, elapsed=10.0), expected=2, token=None)
    assert (await b.load()).stage_elapsed == 10.0


async def test_watch_delivers_the_stored_state_then_every_later_one_in_order(backend: Backend):
    states = [progressing(1), progressing(1, elapsed=5.0), progressing(2, weight=25.0), progressing(3, weight=50.0)]
    await backend.store().compare_and_set(states[0], None, None)
    watch = backend.store().watch()
    seen = [await asyncio.wait_for(watch.__anext__(), 2)]  # what is stored now comes first
    expected = states[0].generation
    for state in states[1:]:
        await backend.store().compare_and_set(state, expected, None)
        expected = state.generation
    for _ in states[1:]:
        seen.append(await asyncio.wait_for(watch.__anext__(), 2))
    await watch.aclose()
    assert [s.to_dict() for s in seen] == [s.to_dict() for s in states]


async def test_an_unreadable_state_is_an_error_and_only_a_write_that_saw_none_replaces_it(backend: Backend):
    await backend.store().compare_and_set(progressing(1), None, None)
    backend.corrupt()
    store = backend.store()
    with pytest.raises(StateError):
        await store.load()
    with pytest.raises(StateConflict):
        await store.compare_and_set(progressing(2), expected=1, token=None)
    fail_safe = RolloutState(phase=Phase.PAUSED, weight=0.0, manual=True, pause_reason="lost", generation=2)
    await store.compare_and_set(fail_safe, expected=None, token=None)
    assert (await backend.store().load()).to_dict() == fail_safe.to_dict()


async def test_leadership_is_held_by_one_and_handed_over_with_a_larger_token(backend: Backend):
    if backend.leadership is None:
        pytest.skip(f"{backend.name}: one process, which always leads")
    a, b = backend.leadership("a", 10.0), backend.leadership("b", 10.0)
    token_a = await a.acquire()
    assert token_a is not None and a.token == token_a
    assert await b.acquire() is None and b.token is None
    backend.clock.advance(5.0)
    assert await a.renew() and await b.acquire() is None
    backend.clock.advance(10.5)  # a paused past its lease
    token_b = await b.acquire()
    assert token_b is not None and token_b > token_a
    assert not await a.renew() and a.token is None
    await b.release()
    token_a2 = await a.acquire()
    assert token_a2 is not None and token_a2 > token_b


async def test_a_stale_leader_token_is_refused_by_the_store(backend: Backend):
    if backend.leadership is None:
        pytest.skip(f"{backend.name}: one process, which always leads")
    old, new = backend.leadership("old", 10.0), backend.leadership("new", 10.0)
    store = backend.store()
    old_token = await old.acquire()
    await store.compare_and_set(progressing(1), None, old_token)
    backend.clock.advance(11.0)
    new_token = await new.acquire()
    await store.compare_and_set(progressing(2, weight=25), 1, new_token)
    with pytest.raises(Fenced, match="no longer leads"):
        await backend.store().compare_and_set(progressing(3, weight=50), 2, old_token)
    assert (await store.load()).weight == 25.0


async def test_the_file_store_keeps_the_state_in_force_when_the_disk_refuses(tmp_path):
    from canaryproxy.backends.file import FileRolloutStore

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    store = FileRolloutStore(blocker / "state.json")
    with pytest.raises(NotDurable, match="cannot write state file"):
        await store.compare_and_set(progressing(1), None, None)
    assert (await store.load()).generation == 1  # the process goes on with it
    restarted = FileRolloutStore(tmp_path / "state.json")
    await restarted.compare_and_set(dataclasses.replace(progressing(1), stage_requests=3), None, None)
    assert (await FileRolloutStore(tmp_path / "state.json").load()).stage_requests == 3
