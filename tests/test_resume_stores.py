"""One suite, both stores: what the proxy relies on from the memory store and the Redis one.

The Redis store runs against Debian's redis-server, started for this module on a free
loopback port without persistence, and stopped after.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest
from _resume_helpers import RedisServer, redis_server, wait_for

from ssekit.proxy._resume import MemoryStore, Store
from ssekit.proxy._resume._memory import held
from ssekit.proxy._resume._records import Cut, End, State, StreamInfo
from ssekit.proxy._resume._redis import RedisStore

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    made: Store
    if request.param == "memory":
        made = MemoryStore(ttl=60, max_bytes=1000, limit=10_000)
    else:
        server: RedisServer = request.getfixturevalue("redis")
        made = RedisStore(server.url, ttl=60, max_bytes=1000, owner="test")
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            await tg.start(made.run)
            yield made
            tg.cancel_scope.cancel()
    await made.aclose()


async def settled(store: Store) -> None:
    """Until the store wrote what it was given (the Redis store writes in the background)."""
    queue = getattr(store, "_queue", None)
    if queue is not None:
        await wait_for(lambda: not queue)
        await anyio.sleep(0.05)


async def read_to_end(store: Store, info: StreamInfo, after: int = 0) -> tuple[list[int], End]:
    positions: list[int] = []
    async for batch in store.read(info, after):
        if isinstance(batch, End):
            return positions, batch
        positions += [position for position, _ in batch]
    raise AssertionError("a read must end with how the stream ended")


async def read_all(store: Store, info: StreamInfo, after: int = 0) -> tuple[list[int], State]:
    positions, end = await read_to_end(store, info, after)
    return positions, end.state


def new_key() -> str:
    return f"-/{secrets.token_hex(6)}"


async def test_events_come_back_from_any_position_then_the_end_state(store: Store) -> None:
    key = new_key()
    writer = store.open(key, "run-" + key[2:])
    assert writer is not None
    for n in range(1, 8):
        writer.append(b"data: %d\n" % n)
    writer.end(State.DONE)
    await settled(store)
    info = await store.lookup(key)
    assert info is not None
    assert (info.state, info.count, info.resumable) == (State.DONE, 7, True)
    for after in range(8):
        assert await read_all(store, info, after) == (list(range(after + 1, 8)), State.DONE)
    bodies = [body async for batch in store.read(info, 5) if not isinstance(batch, End)
              for _, body in batch]  # fmt: skip
    assert bodies == [b"data: 6\n", b"data: 7\n"]


async def test_an_unknown_key_is_none(store: Store) -> None:
    assert await store.lookup(new_key()) is None
    assert not await store.cancel(new_key())


async def test_a_reader_gets_the_live_tail_then_the_cut(store: Store) -> None:
    key = new_key()
    writer = store.open(key, "run-" + key[2:])
    assert writer is not None
    writer.append(b"data: 1\n")
    await settled(store)
    info = await store.lookup(key)
    assert info is not None
    assert info.state is State.LIVE
    got: list[tuple[list[int], State]] = []

    async with anyio.create_task_group() as tg:

        async def reader() -> None:
            got.append(await read_all(store, info))

        tg.start_soon(reader)
        tg.start_soon(reader)  # two readers at once: each gets every event
        for n in range(2, 6):
            await anyio.sleep(0.05)
            writer.append(b"data: %d\n" % n)
        await wait_for(lambda: writer.attached, within=5)
        writer.end(State.CUT)
    assert got == [([1, 2, 3, 4, 5], State.CUT)] * 2
    assert (await store.lookup(key)).state is State.CUT  # type: ignore[union-attr]


@pytest.mark.parametrize("cut", [Cut.UPSTREAM, Cut.GRACE, Cut.OWNER_GONE])
async def test_a_cut_stream_says_why_to_its_readers(store: Store, cut: Cut) -> None:
    key = new_key()
    writer = store.open(key, "run-" + key[2:])
    assert writer is not None
    writer.append(b"data: 1\n")
    writer.end(State.CUT, cut)
    await settled(store)
    info = await store.lookup(key)
    assert info is not None
    assert await read_to_end(store, info) == ([1], End(State.CUT, cut))


async def test_attached_readers_are_seen_by_the_owner(store: Store) -> None:
    key = new_key()
    writer = store.open(key, "run-" + key[2:])
    assert writer is not None
    await settled(store)
    info = await store.lookup(key)
    assert info is not None
    assert not writer.attached
    async with anyio.create_task_group() as tg:
        tg.start_soon(read_all, store, info)
        await wait_for(lambda: writer.attached, within=3)
        tg.cancel_scope.cancel()
    await wait_for(lambda: not writer.attached, within=6)
    writer.end(State.DONE)


async def test_past_max_bytes_the_stream_is_no_longer_resumable(store: Store) -> None:
    key = new_key()
    writer = store.open(key, "run-" + key[2:])
    assert writer is not None
    writer.append(b"x" * 600)
    await settled(store)
    info = await store.lookup(key)
    assert info is not None
    async with anyio.create_task_group() as tg:
        got: list[tuple[list[int], State]] = []

        async def reader() -> None:
            got.append(await read_all(store, info))

        tg.start_soon(reader)
        await anyio.sleep(0.1)
        writer.append(b"y" * 600)  # 1200 > max_bytes 1000
        assert not writer.resumable
        assert writer.count == 1  # the event past the bound was not kept
    assert got == [([1], State.CUT)]
    assert await read_to_end(store, info) == ([], End(State.CUT, Cut.NOT_KEPT))
    await settled(store)
    after = await store.lookup(key)
    assert after is not None
    assert not after.resumable
    writer.end(State.DONE)


async def test_cancel_tells_the_owner_and_cuts_readers_and_removes_an_ended_stream(
    store: Store,
) -> None:
    key = new_key()
    writer = store.open(key, "run-" + key[2:])
    assert writer is not None
    writer.append(b"data: 1\n")
    await settled(store)
    info = await store.lookup(key)
    assert info is not None
    assert await store.cancel(key)
    await wait_for(lambda: writer.cancelled, within=3)
    assert await read_to_end(store, info) == ([1], End(State.CUT, Cut.DELETED))
    writer.end(State.CUT)
    await settled(store)
    assert await store.cancel(key)  # ended: DELETE removes it
    assert await store.lookup(key) is None


async def test_a_newer_stream_under_the_same_key_replaces_the_older(store: Store) -> None:
    key = new_key()
    old = store.open(key, "old-" + key[2:])
    assert old is not None
    old.append(b"data: old\n")
    new = store.open(key, "new-" + key[2:])
    assert new is not None
    new.append(b"data: new\n")
    new.end(State.DONE)
    await settled(store)
    info = await store.lookup(key)
    assert info is not None
    assert info.run == "new-" + key[2:]
    assert await read_all(store, info) == ([1], State.DONE)
    old.end(State.CUT)


async def test_a_key_is_claimed_once_until_released_or_its_stream_is_gone(store: Store) -> None:
    key = new_key()
    assert await store.claim(key, "one")
    assert not await store.claim(key, "two")  # held by a request
    await store.release(key, "two")  # not its claim: nothing
    assert not await store.claim(key, "two")
    await store.release(key, "one")
    assert await store.claim(key, "two")  # given back
    writer = store.open(key, "two")
    assert writer is not None
    writer.append(b"data: 1\n")
    await settled(store)
    assert not await store.claim(key, "three")  # live
    writer.end(State.DONE)
    await settled(store)
    assert not await store.claim(key, "three")  # ended, still kept
    assert await store.cancel(key)  # DELETE removes it
    assert await store.claim(key, "three")


async def test_an_ended_stream_expires_after_the_ttl(redis: RedisServer) -> None:
    memory_now = [0.0]
    memory = MemoryStore(ttl=0.3, max_bytes=100, limit=1000, clock=lambda: memory_now[0])
    remote = RedisStore(redis.url, ttl=0.3, max_bytes=100, owner="test")
    async with anyio.create_task_group() as tg:
        await tg.start(remote.run)
        for one in (memory, remote):
            key = new_key()
            writer = one.open(key, "run-" + key[2:])
            assert writer is not None
            writer.append(b"data: 1\n")
            writer.end(State.DONE)
            await settled(one)
            assert await one.lookup(key) is not None
            memory_now[0] += 0.5
            await anyio.sleep(0.5)
            assert await one.lookup(key) is None
        tg.cancel_scope.cancel()
    await remote.aclose()


async def test_the_memory_store_drops_the_oldest_finished_streams_past_its_limit() -> None:
    cost = held(b"x" * 300)  # what the store really holds for a 300-byte event
    assert cost > 300
    store = MemoryStore(ttl=60, max_bytes=400, limit=3 * cost + 100)
    keys = [new_key() for _ in range(4)]
    for key in keys[:3]:
        writer = store.open(key, key)
        writer.append(b"x" * 300)
        writer.end(State.DONE)
    assert store.total == 3 * cost
    live = store.open(keys[3], keys[3])
    live.append(b"y" * 300)  # over the limit: the oldest finished goes
    assert store.total == 3 * cost
    assert await store.lookup(keys[0]) is None
    assert await store.lookup(keys[1]) is not None
    assert live.resumable
    # Only live streams over the limit: the one that grew is given up, its memory freed.
    store = MemoryStore(ttl=60, max_bytes=800, limit=held(b"x" * 300) + held(b"z" * 400) + 100)
    first, second = store.open("-/1", "1"), store.open("-/2", "2")
    first.append(b"x" * 300)
    second.append(b"z" * 400)
    second.append(b"z" * 350)
    assert not second.resumable
    # Its own bound (800) took the 350 bytes (count 2): the store's limit gave it up.
    assert second.count == 2
    assert first.resumable
    assert store.total == held(b"x" * 300)
