"""The store interface: what the proxy asks of a resume store, and the owner's side of a stream.

A store keeps streams by key. The exchange that forwards a stream (its owner)
writes through a :class:`Writer` without ever waiting: ``append`` and ``end``
return at once, whatever the store does with them. Readers look a stream up
and read it from a position, as batches of ``(position, body)`` and finally
its end state. Both stores (memory, Redis) implement :class:`Store`, and one
shared test suite checks them.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator
from typing import Protocol

import anyio
import anyio.abc

from .._stats import report
from ._records import Cut, End, State, StreamInfo

__all__ = ("Batch", "Store", "StoreUnavailable", "Writer", "report")


#: What a read yields: events as ``(position, body)`` pairs, or how the stream ended, last.
Batch = list[tuple[int, bytes]] | End


class StoreUnavailable(Exception):
    """The store cannot be reached now (Redis down): the resume endpoint answers 503."""


class Writer(abc.ABC):
    """The owner's side of one stored stream; nothing here waits on the store but ``kept``.

    ``resumable`` turns False for good once the stream passed ``max_bytes``
    or its store writes failed (``give_up``). ``cancelled`` (a DELETE) and
    ``attached`` (some reader is attached, on any instance) are what the
    owner's grace logic watches; ``changed()`` returns after any of the three
    may have changed. ``stored`` turns True once the store has the stream (every
    instance finds it): the response head, which hands out its id, waits for it.
    """

    def __init__(self, *, key: str, run: str, owner: str, max_bytes: int) -> None:
        self.key = key
        self.run = run
        self.owner = owner
        self.max_bytes = max_bytes
        self.state = State.LIVE
        self.cut: Cut | None = None
        self.count = 0
        self.size = 0
        self.resumable = True
        self.cancelled = False
        self.attached = False
        self.stored = False
        self.reason = ""
        self._changed: anyio.Event | None = None
        self._control: anyio.Event | None = None

    async def kept(self) -> bool:
        """Wait until the store has the stream (True), or gave it up (False). Bound the
        wait: a store that neither takes nor refuses never returns."""
        while not self.stored and self.resumable:
            await self.control_changed()
        return self.stored and self.resumable

    def append(self, body: bytes) -> None:
        """Store the next event's body (position ``count + 1``); past ``max_bytes``, give up."""
        if not self.resumable or self.state is not State.LIVE:
            return
        if self.size + len(body) > self.max_bytes:
            self.give_up(f"passed --resume-max-bytes {self.max_bytes}")
            return
        self.count += 1
        self.size += len(body)
        self._store_event(self.count, body)

    def end(self, state: State, cut: Cut | None = None) -> None:
        """The upstream's response ended (DONE) or was cut (CUT, and why: ``cut``, else an
        upstream failure); later calls are ignored."""
        if self.state is not State.LIVE:
            return
        self.state = state
        if state is State.CUT:
            self.cut = cut or Cut.UPSTREAM
        self._store_end(state)
        self.signal()

    def give_up(self, reason: str) -> None:
        """Stop keeping this stream: it is no longer resumable (the live client is unharmed)."""
        if self.resumable:
            self.resumable = False
            self.reason = reason
            self._store_give_up(reason)
            self.signal()

    def signal(self, *, data_only: bool = False) -> None:
        """Wake readers waiting in ``changed()``; unless ``data_only`` (a new event), also
        the owner waiting in ``control_changed()`` (cancelled, attached, resumable, ended)."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        if not data_only and self._control is not None:
            self._control.set()
            self._control = None

    async def changed(self) -> None:
        """Return after the next event or control change (for readers)."""
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    async def control_changed(self) -> None:
        """Return after the next control change, not woken per event (for the owner)."""
        if self._control is None:
            self._control = anyio.Event()
        await self._control.wait()

    # What each store does with the writes (called synchronously, must not wait).
    @abc.abstractmethod
    def _store_event(self, position: int, body: bytes) -> None:
        """Keep event ``position``'s body."""

    @abc.abstractmethod
    def _store_end(self, state: State) -> None:
        """Record that the stream ended as ``state`` (and ``self.cut`` when CUT)."""

    @abc.abstractmethod
    def _store_give_up(self, reason: str) -> None:
        """Drop what is kept: the stream is no longer resumable."""


class Store(Protocol):
    """What the proxy needs of a resume store."""

    #: Commands sent to the store so far (0 for memory), for the benchmarks.
    commands: int

    @property
    def available(self) -> bool:
        """False while the store is in an outage (logged once): new streams are not kept,
        ``claim`` raises :class:`StoreUnavailable`."""

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Background work (writing, liveness, probing) until cancelled; ``started()`` once
        the store was checked (an unreachable store is logged, counted, and unavailable)."""

    async def aclose(self) -> None:
        """Release connections; the store is not used after this."""

    async def claim(self, key: str, run: str) -> bool:
        """Reserve ``key`` for the stream ``run`` a request will open: False when a stream
        under it is live or still kept, or another request holds it (never replaced).
        Raises :class:`StoreUnavailable`."""

    async def release(self, key: str, run: str) -> None:
        """``key`` no longer names ``run``: its answer was not kept (no id was handed
        out), so the key is free again; nothing when another run holds it. Errors are
        the claim's expiry's to mend."""

    def open(self, key: str, run: str) -> Writer | None:
        """Start keeping a new stream under ``key`` (replacing an older one: the caller
        claimed the key, or made a random one), or None when the store cannot take it
        now (then the stream is simply not resumable)."""

    async def lookup(self, key: str) -> StreamInfo | None:
        """The stream under ``key`` now, or None; raises :class:`StoreUnavailable`."""

    def read(self, info: StreamInfo, after: int) -> AsyncGenerator[Batch, None]:
        """Events after position ``after``, live as they come, then how it ended (DONE, or
        CUT and why: also when the owner died or the store let it go); a reader is
        attached while this runs. Raises :class:`StoreUnavailable`."""

    async def cancel(self, key: str) -> bool:
        """DELETE: mark the stream cut (``Cut.DELETED``) and tell its owner to close its
        upstream now.
        False when there is no such stream; raises :class:`StoreUnavailable`."""

    def now(self) -> float:
        """The clock ``StreamInfo.expires`` is on."""
