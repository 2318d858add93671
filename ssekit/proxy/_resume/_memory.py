"""The memory store: streams kept in this process, for resuming on the same instance.

Bounded twice: each stream by ``max_bytes`` of event bodies (then it is given
up, its events freed), all of them by ``limit`` (then the oldest finished
streams go first; with none left to drop, the stream that grew is given up).
The limit counts the bytes really held, not only the bodies' lengths: each
event is a bytes object and a list slot, which for tiny events is most of it.
An ended stream is replayable for ``ttl`` seconds, on the monotonic clock.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable

import anyio
import anyio.abc

from ._records import PIECE, Cut, End, State, StreamInfo
from ._store import Batch, Writer

__all__ = ("MemoryStore", "held")


def held(body: bytes) -> int:
    """The bytes the store holds for one event: the bytes object and its list slot."""
    return sys.getsizeof(body) + 8


class _Record(Writer):
    def __init__(self, store: MemoryStore, *, key: str, run: str, owner: str) -> None:
        super().__init__(key=key, run=run, owner=owner, max_bytes=store.max_bytes)
        self.store = store
        self.events: list[bytes] = []
        self.held = 0  # bytes held for the events (see held()), counted in store.total
        self.readers = 0
        self.expires: float | None = None

    def _store_event(self, position: int, body: bytes) -> None:
        self.events.append(body)
        self.held += held(body)
        self.store._grew(self, held(body))
        self.signal(data_only=True)

    def _store_end(self, state: State) -> None:
        self.store._ended(self)

    def _store_give_up(self, reason: str) -> None:
        self.store._freed(self)

    def info(self) -> StreamInfo:
        return StreamInfo(
            key=self.key,
            run=self.run,
            state=self.state,
            count=self.count,
            owner=self.owner,
            resumable=self.resumable,
            expires=self.expires,
        )


class MemoryStore:
    """Streams in this process's memory (see the module docstring for the bounds)."""

    def __init__(
        self,
        *,
        ttl: float,
        max_bytes: int,
        limit: int,
        owner: str = "memory",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.limit = limit
        self.owner = owner
        self.now = clock
        self.commands = 0
        self.available = True  # memory does not fail
        self.total = 0  # bytes held for events (see held()), all streams
        self._streams: dict[str, _Record] = {}
        self._finished: OrderedDict[str, _Record] = OrderedDict()  # by end time, by run
        self._claims: dict[str, str] = {}  # key -> run, claimed by a request not yet opened

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        while True:  # expiry is also swept on every open and lookup; this frees idle memory
            await anyio.sleep(max(1.0, min(self.ttl, 60.0)))
            self._sweep()

    async def aclose(self) -> None:
        self._streams.clear()
        self._finished.clear()
        self._claims.clear()
        self.total = 0

    async def claim(self, key: str, run: str) -> bool:
        self._sweep()
        if key in self._streams or key in self._claims:
            return False
        self._claims[key] = run
        return True

    async def release(self, key: str, run: str) -> None:
        if self._claims.get(key) == run:
            del self._claims[key]
        record = self._streams.get(key)
        if record is not None and record.run == run:
            self._forget(record, "not kept")

    def open(self, key: str, run: str) -> Writer:
        self._sweep()
        if self._claims.get(key) == run:
            del self._claims[key]  # the claim becomes the stream
        old = self._streams.get(key)
        if old is not None:
            self._forget(old, "replaced by a newer stream with the same key")
        record = _Record(self, key=key, run=run, owner=self.owner)
        record.stored = True  # found by lookups from now on
        self._streams[key] = record
        return record

    async def lookup(self, key: str) -> StreamInfo | None:
        self._sweep()
        record = self._streams.get(key)
        return None if record is None else record.info()

    async def read(self, info: StreamInfo, after: int) -> AsyncGenerator[Batch, None]:
        record = self._streams.get(info.key)
        if record is None or record.run != info.run:
            yield End(State.CUT, Cut.NOT_KEPT)
            return
        record.readers += 1
        record.attached = True
        record.signal()
        try:
            position = after
            while True:
                if not record.resumable:
                    yield End(State.CUT, Cut.NOT_KEPT)
                    return
                if position < record.count:
                    # About PIECE bytes at a time: the endpoint writes each batch before it
                    # asks for the next, so a stalled reader holds one, not the backlog.
                    batch: list[tuple[int, bytes]] = []
                    size = 0
                    while position < record.count and (not batch or size < PIECE):
                        body = record.events[position]
                        position += 1
                        batch.append((position, body))
                        size += len(body)
                    yield batch
                elif record.state is not State.LIVE:
                    yield End(record.state, record.cut)
                    return
                else:
                    await record.changed()
        finally:
            record.readers -= 1
            record.attached = record.readers > 0
            record.signal()

    async def cancel(self, key: str) -> bool:
        self._sweep()
        record = self._streams.get(key)
        if record is None:
            return False
        if record.state is State.LIVE:
            record.cancelled = True
            record.end(State.CUT, Cut.DELETED)  # readers see it now; the owner closes upstream
        else:
            self._forget(record, "deleted")  # an ended stream: DELETE removes it
        return True

    # -- bookkeeping --------------------------------------------------------

    def _grew(self, record: _Record, size: int) -> None:
        self.total += size
        while self.total > self.limit and self._finished:
            _, oldest = self._finished.popitem(last=False)
            self._forget(oldest, f"evicted (--resume-memory-limit {self.limit})")
        if self.total > self.limit:
            record.give_up(f"the memory store is full (--resume-memory-limit {self.limit})")

    def _ended(self, record: _Record) -> None:
        record.expires = self.now() + self.ttl
        if self._streams.get(record.key) is record:
            self._finished[record.run] = record

    def _freed(self, record: _Record) -> None:
        self.total -= record.held
        record.events = []
        record.size = record.held = 0

    def _forget(self, record: _Record, reason: str) -> None:
        """Drop ``record`` (expired, evicted or replaced): new lookups miss it, its memory
        is freed, and readers still on it see it cut rather than wait or skip events."""
        if self._streams.get(record.key) is record:
            del self._streams[record.key]
        self._finished.pop(record.run, None)
        record.give_up(reason)

    def _sweep(self) -> None:
        now = self.now()
        while self._finished:
            record = next(iter(self._finished.values()))
            if record.expires is None or record.expires > now:
                return
            self._forget(record, "expired (--resume-ttl)")
