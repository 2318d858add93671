"""The Redis store: streams shared by every proxy instance pointed at one Redis.

Imported only when ``--resume-store redis://...`` is given (extra ``ssekit[redis]``).

Keys (``P`` = ``ssekit:``), all expiring: ``--resume-ttl`` after the stream
ended, ``--resume-ttl`` plus a minute after the last write while it is live:

    P k:<key>   the stream's current run (a key reused by a newer stream points anew)
    P m:<run>   hash: key, state (live/done/cut), owner, resumable (1/0), cut (why)
    P e:<run>   Redis Stream of the events, entry id ``<position>-0``, field ``b``: body
                (positions are 1, 2, 3... with no gap, so XLEN is the count)
    P o:<run>   the owner's liveness: refreshed every second, gone 3 s after its last refresh
    P a:<run>   some reader is attached: refreshed every second by each reader, 3 s
    P c:<run>   a DELETE asked the owner to cancel
    P p:<owner> the instance's probe of a store in an outage (a write: PING answers even
                when Redis refuses writes at maxmemory)

The owner never waits on Redis: its writes go into a bounded queue, written
as one pipeline per batch by a background task (one XADD per event, nothing
else per event); another refreshes its live streams' liveness each second,
reads back ``c`` and ``a`` for them, and every ten seconds pushes their keys'
expiry on.
Redis is checked (PING) before the proxy serves, and each second by every
instance (PING when it forwards no stream). When any command fails, an outage
begins (:class:`Outage`): every live stream of this instance stops being
resumable (their clients are unharmed), new streams are not kept, it is logged
once and counted, and Redis is probed with a write, backing off from 1 s to
10 s, until it takes one again; the outage's end is logged once it held 5 s.
A key of a stream this instance still forwards that Redis dropped (an evicting
``maxmemory-policy``) is told from one that never existed: the stream stops
being resumable, logged and counted as evicted. Readers (any instance) replay
with XRANGE and follow the tail with XREAD BLOCK, checking the state and the
owner's liveness at least each second, so a dead owner shows as a cut within
``LIVENESS_TTL + LIVENESS_EVERY`` (4 s).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any, Final

import anyio
import anyio.abc
import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .._stats import Metrics
from ._records import (
    PIECE,
    PROBE_FIRST,
    PROBE_MAX,
    Cut,
    End,
    Outage,
    State,
    StreamInfo,
    owner_lost,
    redacted,
)
from ._store import Batch, StoreUnavailable, Writer, report

__all__ = ("LIVENESS_EVERY", "LIVENESS_TTL", "RedisStore")

PREFIX: Final = "ssekit:"
#: The owner refreshes its liveness key, and readers check it, this often (seconds).
LIVENESS_EVERY: Final = 1.0
#: A liveness (or attached) key lives this long after its last refresh (seconds).
LIVENESS_TTL: Final = 3.0
#: A live stream's keys outlive its last write by the TTL plus this (seconds).
LIVE_SLACK: Final = 60.0
#: Longest XREAD BLOCK of a reader (ms); then it checks the state and the owner.
BLOCK_MS: Final = 1000
#: Operations queued for the writer task, at most; past it a stream stops being resumable.
QUEUE_LIMIT: Final = 50_000
#: Operations written in one pipeline, at most.
BATCH: Final = 2000
#: Events returned by one XRANGE / XREAD, at most; fewer for larger events (see _Count).
READ_COUNT: Final = 1000

_ERRORS: Final = (redis.exceptions.RedisError, OSError)

#: Delete a claim (KEYS[1] = P k:<key>) only while it is still the run's (ARGV[1]).
_RELEASE: Final = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


def _k(key: str) -> str:
    return f"{PREFIX}k:{key}"


def _m(run: str) -> str:
    return f"{PREFIX}m:{run}"


def _e(run: str) -> str:
    return f"{PREFIX}e:{run}"


def _o(run: str) -> str:
    return f"{PREFIX}o:{run}"


def _a(run: str) -> str:
    return f"{PREFIX}a:{run}"


def _c(run: str) -> str:
    return f"{PREFIX}c:{run}"


def _p(owner: str) -> str:
    return f"{PREFIX}p:{owner}"


def _cut(raw: bytes | None) -> Cut:
    """The ``cut`` field as written by an owner (an upstream failure when absent)."""
    try:
        return Cut(raw.decode()) if raw else Cut.UPSTREAM
    except ValueError:
        return Cut.UPSTREAM


def _position(entry_id: bytes) -> int:
    return int(entry_id.partition(b"-")[0])


class _Count:
    """How many events a reader asks Redis for at once: about PIECE bytes' worth.

    Redis cannot bound a read in bytes, so the count follows the largest event
    this reader has seen: a reader that takes nothing holds one such read, never
    the backlog (nor does the connection's buffer grow to it).
    """

    __slots__ = ("largest",)

    def __init__(self) -> None:
        self.largest: int | None = None

    def __call__(self) -> int:
        if self.largest is None:
            return 16  # nothing seen yet
        return max(1, min(READ_COUNT, PIECE // max(1, self.largest)))

    def saw(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[tuple[int, bytes]]:
        batch = [(_position(entry_id), fields[b"b"]) for entry_id, fields in entries]
        self.largest = max(self.largest or 0, *(len(body) for _, body in batch))
        return batch


class _RedisWriter(Writer):
    def __init__(self, store: RedisStore, *, key: str, run: str, owner: str) -> None:
        super().__init__(key=key, run=run, owner=owner, max_bytes=store.max_bytes)
        self.store = store

    def _store_event(self, position: int, body: bytes) -> None:
        self.store._push(self, ("event", position, body))

    def _store_end(self, state: State) -> None:
        self.store._live.pop(self.run, None)
        self.store._push(self, ("end", state, self.cut))

    def _store_give_up(self, reason: str) -> None:
        self.store._live.pop(self.run, None)
        self.store._push(self, ("give_up",))


class RedisStore:
    """Streams in Redis (see the module docstring for the keys and the timing)."""

    def __init__(
        self,
        url: str,
        *,
        ttl: float,
        max_bytes: int,
        owner: str,
        metrics: Metrics | None = None,
        log_format: str = "text",
    ) -> None:
        self.url = url
        self.where = redacted(url)
        self.ttl_ms = max(1, int(ttl * 1000))
        self.live_ms = int((ttl + LIVE_SLACK) * 1000)
        self.max_bytes = max_bytes
        self.owner = owner
        self.metrics = metrics if metrics is not None else Metrics()
        self.commands = 0
        self.health = Outage()
        self._json = log_format == "json"
        # Redis-py's types mix its sync and async APIs; the calls used here are awaited.
        self._redis: Any = redis.asyncio.Redis.from_url(
            url,
            socket_timeout=BLOCK_MS / 1000 + 2,
            socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 0),
        )
        self._queue: deque[tuple[_RedisWriter, tuple[Any, ...]]] = deque()
        self._wake = anyio.Event()
        self._live: dict[str, _RedisWriter] = {}
        self._ticks = 0

    @property
    def available(self) -> bool:
        return self.health.up

    def now(self) -> float:
        return time.monotonic()  # Redis expires keys itself: StreamInfo.expires stays None

    # -- the owner's side --------------------------------------------------------------

    def open(self, key: str, run: str) -> Writer | None:
        if not self.available or len(self._queue) >= QUEUE_LIMIT:
            return None
        writer = _RedisWriter(self, key=key, run=run, owner=self.owner)
        self._live[run] = writer
        self._push(writer, ("open",))
        return writer

    def _push(self, writer: _RedisWriter, op: tuple[Any, ...]) -> None:
        if not self.available:
            return  # the writer was given up with the others; nothing reaches Redis now
        if op[0] == "event" and len(self._queue) >= QUEUE_LIMIT:
            writer.give_up(f"the Redis write queue is full ({QUEUE_LIMIT} operations)")
            return
        self._queue.append((writer, op))
        self._wake.set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:  # before serving: an unreachable store is said (and counted) at start-up
            self.commands += 1
            await self._redis.ping()
        except _ERRORS as exc:
            self._failed(exc, [], starting=True)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._write_loop)
            tg.start_soon(self._liveness_loop)
            task_status.started()

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def _write_loop(self) -> None:
        while True:
            if not self._queue:
                self._wake = anyio.Event()
                await self._wake.wait()
            ops = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            try:
                await self._write(ops)
            except _ERRORS as exc:
                self._failed(exc, [writer for writer, _ in ops])

    async def _write(self, ops: list[tuple[_RedisWriter, tuple[Any, ...]]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        appends: list[tuple[int, _RedisWriter]] = []  # XADDs to a stream that must exist
        for writer, op in ops:
            run = writer.run
            kind = op[0]
            if kind == "event":
                if op[1] == 1:  # the stream now exists: it expires if its owner dies
                    pipe.xadd(_e(run), {"b": op[2]}, id="1-0")
                    pipe.pexpire(_e(run), self.live_ms)
                else:  # never recreate a stream Redis evicted: a replay would skip events
                    appends.append((len(pipe), writer))
                    pipe.xadd(_e(run), {"b": op[2]}, id=f"{op[1]}-0", nomkstream=True)
            elif kind == "open":
                pipe.hset(
                    _m(run),
                    mapping={
                        "key": writer.key,
                        "state": State.LIVE.value,
                        "owner": writer.owner,
                        "resumable": 1,
                    },
                )
                pipe.set(_k(writer.key), run, px=self.live_ms)
                pipe.set(_o(run), 1, px=int(LIVENESS_TTL * 1000))
                pipe.pexpire(_m(run), self.live_ms)
            elif kind == "end":
                fields = {"state": op[1].value, **({"cut": op[2].value} if op[2] else {})}
                pipe.hset(_m(run), mapping=fields)
                pipe.delete(_o(run))
                for name in (_k(writer.key), _m(run), _e(run)):
                    pipe.pexpire(name, self.ttl_ms)
            elif kind == "give_up":
                pipe.hset(_m(run), "resumable", 0)
                pipe.pexpire(_m(run), self.live_ms)  # every key expires, this one too
                pipe.delete(_e(run), _o(run))
        self.commands += len(pipe)
        results = await pipe.execute()
        for writer, op in ops:
            if op[0] == "open":  # every instance finds it now: its head may go out
                writer.stored = True
                writer.signal()
        for index, writer in appends:
            if results[index] is None:
                self._evicted(writer)

    async def _liveness_loop(self) -> None:
        while True:
            await anyio.sleep(LIVENESS_EVERY)
            self._ticks += 1
            try:
                if self.available:
                    await self._refresh()
                elif self.health.probe_due(time.monotonic()):
                    await self._probe()
                    self.health.answered(time.monotonic())
            except _ERRORS as exc:
                self._failed(exc, [])
                continue
            if self.health.over(time.monotonic()):
                report(
                    logging.WARNING,
                    f"ssekit: the resume store {self.where} answers again; new streams are "
                    "kept and resume requests served",
                    {"resume_store": "up", "store": self.where, "instance": self.owner},
                    as_json=self._json,
                )

    async def _probe(self) -> None:
        """Ask Redis to take a write (PING answers even when writes are refused)."""
        self.commands += 1
        await self._redis.set(_p(self.owner), 1, px=int(LIVENESS_TTL * 1000))

    async def _refresh(self) -> None:
        """Say each live stream's owner is alive; learn whether it was cancelled, has a
        reader attached, or was evicted. With none, check that Redis answers."""
        writers = [writer for writer in self._live.values() if writer.stored]
        if not writers:
            self.commands += 1
            await self._redis.ping()
            return
        pipe = self._redis.pipeline(transaction=False)
        for writer in writers:
            pipe.set(_o(writer.run), 1, px=int(LIVENESS_TTL * 1000))
            pipe.exists(_c(writer.run))
            pipe.exists(_a(writer.run))
            pipe.exists(_m(writer.run))
            if self._ticks % 10 == 0:  # a live stream idle for long keeps its keys
                for name in (_k(writer.key), _m(writer.run), _e(writer.run)):
                    pipe.pexpire(name, self.live_ms)
        self.commands += len(pipe)
        results = await pipe.execute()
        step = 7 if self._ticks % 10 == 0 else 4
        for index, writer in enumerate(writers):
            cancelled = bool(results[index * step + 1])
            attached = bool(results[index * step + 2])
            if not results[index * step + 3] and writer.state is State.LIVE:
                self._evicted(writer)
                continue
            if cancelled != writer.cancelled or attached != writer.attached:
                writer.cancelled = writer.cancelled or cancelled
                writer.attached = attached
                writer.signal()

    def _evicted(self, writer: _RedisWriter) -> None:
        """Redis dropped a key of a stream this instance still forwards (an evicting
        maxmemory-policy): it was evicted, not never there. It stops being resumable."""
        if not writer.resumable:
            return
        writer.give_up("Redis evicted its keys (maxmemory-policy)")
        self.metrics.resume_evicted += 1
        self.metrics.resume_given_up += 1
        report(
            logging.WARNING,
            f"ssekit: stream {writer.key.partition('/')[2]} was evicted from the resume store "
            f"{self.where} (its maxmemory-policy drops keys: run noeviction or volatile-*); it "
            "goes on for its client but is not resumable; counted in "
            "ssekit_resume_evicted_total",
            {
                "resume_evicted": writer.key.partition("/")[2],
                "store": self.where,
                "instance": self.owner,
            },
            as_json=self._json,
        )

    def _failed(
        self, exc: BaseException, writers: list[_RedisWriter], *, starting: bool = False
    ) -> StoreUnavailable:
        """A command failed: an outage (see :class:`Outage`), logged when it begins; every
        live stream here stops being resumable. Returns the error for readers to raise."""
        self.metrics.resume_store_errors += 1
        began = self.health.failed(time.monotonic())
        self._queue.clear()
        lost = {writer.run: writer for writer in writers if writer.state is State.LIVE}
        lost.update(self._live)
        for writer in lost.values():
            if writer.resumable:
                writer.give_up("the resume store failed")
                self.metrics.resume_given_up += 1
        if began:
            report(
                logging.ERROR,
                f"ssekit: the resume store {self.where} "
                f"{'does not answer at start-up' if starting else 'failed'} "
                f"({type(exc).__name__}: {exc}); {len(lost)} live stream(s) go on but are no "
                "longer resumable, new streams are not kept and resume requests may get 503 "
                f"until it takes writes again (probed from every {PROBE_FIRST:g} s to every "
                f"{PROBE_MAX:g} s); counted in "
                "ssekit_resume_store_errors_total",
                {
                    "resume_store": "down",
                    "store": self.where,
                    "instance": self.owner,
                    "error": type(exc).__name__,
                    "lost_streams": len(lost),
                    "at_start": starting,
                },
                as_json=self._json,
            )
        return StoreUnavailable(f"{type(exc).__name__}: {exc}")

    # -- the readers' side -------------------------------------------------------------

    async def claim(self, key: str, run: str) -> bool:
        if not self.available:
            raise StoreUnavailable("in an outage: new streams are not kept until it answers")
        try:
            self.commands += 1
            # The claim lives as long as a live stream's keys; open() renews it.
            return bool(await self._redis.set(_k(key), run, nx=True, px=self.live_ms))
        except _ERRORS as exc:
            raise self._failed(exc, []) from exc

    async def release(self, key: str, run: str) -> None:
        try:
            self.commands += 1
            await self._redis.eval(_RELEASE, 1, _k(key), run)
        except _ERRORS as exc:
            self._failed(exc, [])  # the claim expires with a live stream's keys

    async def lookup(self, key: str) -> StreamInfo | None:
        try:
            self.commands += 3
            run = await self._redis.get(_k(key))
            if run is None:
                for writer in list(self._live.values()):
                    if writer.key == key and writer.stored:
                        self._evicted(writer)  # this instance forwards it: evicted
                return None
            pipe = self._redis.pipeline(transaction=False)
            pipe.hgetall(_m(run.decode()))
            pipe.xlen(_e(run.decode()))
            meta, count = await pipe.execute()
        except _ERRORS as exc:
            raise self._failed(exc, []) from exc
        if not {b"state", b"owner", b"resumable"} <= meta.keys():
            return None  # a claim not yet a stream, or a stream Redis dropped
        return StreamInfo(
            key=key,
            run=run.decode(),
            state=State(meta[b"state"].decode()),
            count=int(count),
            owner=meta[b"owner"].decode(),
            resumable=meta[b"resumable"] == b"1",
        )

    async def read(self, info: StreamInfo, after: int) -> AsyncGenerator[Batch, None]:
        run = info.run
        events = _e(run)
        position = after
        checked = float("-inf")
        count = _Count()
        try:
            while True:
                self.commands += 1
                entries = await self._redis.xrange(
                    events, min=f"{position + 1}-0", max="+", count=count()
                )
                more = bool(entries)
                if more:
                    batch = count.saw(entries)
                    del entries  # one copy of the batch while the endpoint writes it
                    position = batch[-1][0]
                    yield batch
                    del batch
                    if time.monotonic() - checked < LIVENESS_EVERY:
                        continue
                checked = time.monotonic()
                end = await self._check(run)
                if end is not None:
                    # Events written before the end state are all in: serve them first.
                    while True:
                        self.commands += 1
                        rest = await self._redis.xrange(
                            events, min=f"{position + 1}-0", max="+", count=count()
                        )
                        if not rest:
                            break
                        batch = count.saw(rest)
                        del rest
                        position = batch[-1][0]
                        yield batch
                        del batch
                    yield end
                    return
                if more:
                    continue
                self.commands += 1
                found = await self._redis.xread(
                    {events: f"{position}-0"}, block=BLOCK_MS, count=count()
                )
                for _, tail in found or []:
                    if tail:
                        batch = count.saw(tail)
                        position = batch[-1][0]
                        yield batch
                del found
        except _ERRORS as exc:
            raise self._failed(exc, []) from exc

    async def _check(self, run: str) -> End | None:
        """How the stream ended, if it did (a cut too when given up, gone, or its owner
        died), else None; says a reader is attached."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hmget(_m(run), ["state", "resumable", "cut"])
        pipe.exists(_o(run))
        pipe.set(_a(run), 1, px=int(LIVENESS_TTL * 1000))
        self.commands += 3
        (state_text, resumable, cut), owner_alive, _ = await pipe.execute()
        if state_text is None or resumable != b"1":
            # Expired, deleted, evicted or given up: what follows cannot be served.
            return End(State.CUT, Cut.NOT_KEPT)
        state = State(state_text.decode())
        if state is State.DONE:
            return End(State.DONE)
        if state is State.CUT:
            return End(State.CUT, _cut(cut))
        if owner_lost(state=state, owner_alive=bool(owner_alive)):
            return End(State.CUT, Cut.OWNER_GONE)
        return None

    async def cancel(self, key: str) -> bool:
        try:
            self.commands += 2
            run_bytes = await self._redis.get(_k(key))
            if run_bytes is None:
                return False
            run = run_bytes.decode()
            state = await self._redis.hget(_m(run), "state")
            if state is None:
                return False
            pipe = self._redis.pipeline(transaction=False)
            if state == State.LIVE.value.encode():
                pipe.set(_c(run), 1, px=self.live_ms)
                pipe.hset(_m(run), mapping={"state": State.CUT.value, "cut": Cut.DELETED.value})
            else:
                pipe.delete(_k(key), _m(run), _e(run))
            self.commands += len(pipe)
            await pipe.execute()
        except _ERRORS as exc:
            raise self._failed(exc, []) from exc
        writer = self._live.get(run)
        if writer is not None:  # the owner is this instance: cancel now, not at the next tick
            writer.cancelled = True
            writer.signal()
        return True
