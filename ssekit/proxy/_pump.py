"""The body hot path: upstream read -> one client write, with the decoder watching.

Each upstream chunk is written to the client (as one chunk) before the next
upstream read, so a slow client slows the upstream read instead of growing a
buffer. What the proxy says itself (a heartbeat, an error event) goes in only
where the tap saw an event boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from .._decoder import Decoder
from .._encoder import encode, encode_comment
from .._errors import SSEError, UpstreamError
from .._event import Comment, Event
from .._http import ClientGone, Downstream, FastStream, OriginConnection, frame_chunks
from ..openai import DONE
from ._config import ProxyConfig
from ._histograms import SECONDS, new_gaps
from ._relay import Input, Relay, heartbeat_due
from ._stats import StreamStats

if TYPE_CHECKING:
    from ._record import Take
    from ._resume import Recording
    from ._usage import Meter

__all__ = ("Tap", "pump")


class Tap:
    """The decoder watching a forwarded event stream: events, first event, ``[DONE]``.

    What it sees never changes what is forwarded. Once it fails (a line past
    its bound) it no longer knows where events end, so ``at_boundary`` is
    False from then on: nothing more may be inserted into that stream.
    """

    __slots__ = ("_decoder", "_gaps", "_meter", "_record", "_started", "_stats", "failed")

    def __init__(
        self,
        stats: StreamStats,
        started: float,
        record: Recording | None = None,
        meter: Meter | None = None,
    ) -> None:
        self._decoder: Decoder[Event | Comment] = Decoder(comments=True)
        self._stats = stats
        self._started = started
        self._record = record  # resume hook: the stream's events are kept (never waits)
        self._meter = meter  # usage and first token (its ``see`` changes as it reads)
        self._gaps = stats.gaps = new_gaps()  # the gap between events, per bucket
        self.failed = False

    def feed(self, chunk: bytes) -> None:
        if self.failed:
            return
        try:
            items = self._decoder.feed(chunk)
        except SSEError:
            self.failed = True
            if self._record is not None:
                self._record.fail()
            return
        stats = self._stats
        seen = 0
        for item in items:
            if isinstance(item, Event):
                seen += 1
                if item.data == DONE:
                    stats.done_seen = True
                if self._record is not None:
                    self._record.event(item)
                if self._meter is not None:
                    self._meter.see(item)
        if seen:
            # One clock read and at most one bisect per read, not per event: the events
            # of one read arrived together (gap 0, the first bucket). The gaps' sum is
            # last_event - first_event, taken when the stream ends.
            at = time.monotonic() - self._started
            stats.events += seen
            last = stats.last_event
            stats.last_event = at
            if last is None:
                stats.first_event = at
            else:
                self._gaps[bisect_left(SECONDS, at - last)] += 1
            if seen > 1:
                self._gaps[0] += seen - 1

    @property
    def at_boundary(self) -> bool:
        """True between two events of the forwarded stream (a relay may write its own)."""
        return not self.failed and self._decoder.at_boundary


async def pump(
    client: Downstream,
    upstream: OriginConnection,
    relay: Relay,
    stats: StreamStats,
    config: ProxyConfig,
    *,
    started: float,
    sse: bool,
    read_to_close: bool,
    sized: bool,
    head: bytes,
    record: Recording | None = None,
    cassette: Take | None = None,
    meter: Meter | None = None,
) -> bool:
    """Write the response ``head``, forward the body and its end; True when
    it ended cleanly (the upstream may be reused).

    The head goes out with the first body bytes when they are already here
    (one write, one wake of the client), else at once.

    A read-to-close event stream that stops inside an event was cut, not
    finished: the client's response is cut too, never ended cleanly. A body
    with a Content-Length (``sized``) gets nothing inserted: it would not fit.
    A response the client gets chunk-framed takes the callback path when it
    can (each read's chunks framed in one piece, one write). ``record``: the
    events the tap decodes are also kept for resumption. ``cassette``: every
    chunk forwarded is also queued for ``--record`` (never waits). ``meter``: the
    events (or a non-streamed body) are read for usage and the first token.
    """
    tap: Tap | None = None
    if sse:
        tap = Tap(stats, started, record, meter)
    elif meter is not None:
        tap = _BodyTap(stats, started, meter)
    heartbeat = None if sized or not sse else config.heartbeat
    error_event = config.error_event and not sized and sse
    if tap is None or heartbeat is None:
        return await _forward(
            client, upstream, relay, stats, config.idle_timeout, error_event, tap, None,
            read_to_close, head, cassette,
        )  # fmt: skip
    await client.send_raw(head)  # before any heartbeat
    lock = anyio.Lock()  # the heartbeat task writes too: one writer at a time
    done = False
    async with anyio.create_task_group() as tg:
        tg.start_soon(_heartbeats, client, tap, lock, heartbeat, relay, tg.cancel_scope)
        done = await _forward(
            client, upstream, relay, stats, config.idle_timeout, error_event, tap, lock,
            read_to_close, b"", cassette,
        )  # fmt: skip
        tg.cancel_scope.cancel()
    return done


async def _forward(
    client: Downstream,
    upstream: OriginConnection,
    relay: Relay,
    stats: StreamStats,
    idle_timeout: float,
    error_event: bool,
    tap: Tap | None,
    lock: anyio.Lock | None,
    read_to_close: bool,
    head: bytes,
    cassette: Take | None = None,
) -> bool:
    try:
        fast = isinstance(client.stream, FastStream)
        if client.conn.chunked and fast and upstream.spliceable and type(client) is Downstream:
            # The hot path: forwarded in the upstream's read callback, no task per read.
            splice = _ToClient(client, relay, stats, tap, head, cassette)
            try:
                await upstream.splice_chunked(
                    splice.deliver, idle_timeout=idle_timeout, caught_up=splice.flush
                )
            finally:
                splice.stop()
        else:
            if head:
                await _write(client, lock, head)
            async for batch in upstream.receive_body_batches(idle_timeout=idle_timeout):
                # One socket write per upstream read, each chunk still its own HTTP chunk.
                _to_cassette(cassette, batch)  # stamped as it arrived, before the write
                await _write(client, lock, b"".join([client.conn.send_data(c) for c in batch]))
                if not relay.open:
                    return False  # the client left while we wrote (the watcher saw it)
                _forwarded(relay, stats, tap, batch)
        if read_to_close and tap is not None and not tap.at_boundary:
            raise UpstreamError(
                "upstream closed the connection inside an event (a body without a length: "
                "the stream was cut)",
                502,
            )
    except UpstreamError as exc:
        if not relay.open:
            return False
        relay.on(Input.TIMED_OUT if exc.status == 504 else Input.UPSTREAM_FAILED)
        stats.error = str(exc)
        if error_event and tap is not None and tap.at_boundary:
            message = json.dumps({"error": {"message": str(exc), "type": "proxy_error"}})
            with contextlib.suppress(ClientGone):
                error = encode(Event(event="error", data=message))
                await _write(client, lock, client.conn.send_data(error))
        return False
    if not relay.open:
        return False
    if client.conn.sending_body:  # else the splice wrote it with the last chunk
        await client.send_end()
    relay.on(Input.END)
    return True


class _BodyTap(Tap):
    """A non-streamed answer's chunks, to the meter (its usage is read at the end)."""

    __slots__ = ("_feed",)

    def __init__(self, stats: StreamStats, started: float, meter: Meter) -> None:
        super().__init__(stats, started)
        stats.gaps = None  # not an event stream: no events, no gaps
        self._feed = meter.body

    def feed(self, chunk: bytes) -> None:
        self._feed(chunk)

    @property
    def at_boundary(self) -> bool:
        return True


class _ToClient:
    """One upstream read's chunks, in its read callback: one client write, then the books.

    The first write carries the response head, the last one the end of the
    body, when they are here together. ``deliver`` returns False when the
    client is over its buffer limit: the upstream read then pauses until it
    drains (TCP pushes back on the upstream), as a waiting write does elsewhere.
    """

    __slots__ = ("_cassette", "_client", "_head", "_relay", "_resume", "_stall", "_stats", "_tap")

    def __init__(
        self,
        client: Downstream,
        relay: Relay,
        stats: StreamStats,
        tap: Tap | None,
        head: bytes,
        cassette: Take | None = None,
    ) -> None:
        self._cassette = cassette
        self._client = client
        self._relay = relay
        self._stats = stats
        self._tap = tap
        self._head = head
        self._resume: Callable[[], None] | None = None
        self._stall: asyncio.TimerHandle | None = None  # --send-timeout while the client is full

    def deliver(self, batch: list[bytes], resume: Callable[[], None], last: bool) -> bool:
        if not self._relay.open:
            raise ClientGone  # the watcher saw the client leave; the exchange is ending
        _to_cassette(self._cassette, batch)
        data = frame_chunks(batch)
        if self._head:
            data, self._head = self._head + data, b""
        if last:
            data += self._client.conn.send_end()
        room = self._client.write_now(data, self._drained)
        _forwarded(self._relay, self._stats, self._tap, batch)
        if not room:
            self._resume = resume
            limit = self._client.send_timeout
            if limit is not None and self._stall is None:
                self._stall = asyncio.get_running_loop().call_later(limit, self._stalled)
        return room

    def _drained(self) -> None:
        self.stop()
        if self._resume is not None:
            self._resume()

    def _stalled(self) -> None:
        """The client took nothing for --send-timeout: cut it (the watcher then ends the
        exchange, closing the upstream)."""
        self._stall = None
        self._client.cut_stalled()

    def stop(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def flush(self) -> None:
        """The head goes out now, if no body bytes took it along."""
        if self._head:
            head, self._head = self._head, b""
            self._client.write_now(head, self._drained)


def _to_cassette(cassette: Take | None, batch: list[bytes]) -> None:
    """``--record``: queue each chunk of one upstream read (never waits)."""
    if cassette is not None:
        for chunk in batch:
            cassette.chunk(chunk)


def _forwarded(relay: Relay, stats: StreamStats, tap: Tap | None, batch: list[bytes]) -> None:
    for chunk in batch:
        relay.on(Input.CHUNK)
        stats.body_bytes += len(chunk)
        if tap is not None:
            tap.feed(chunk)


async def _write(client: Downstream, lock: anyio.Lock | None, framed: bytes) -> None:
    """Write bytes already framed; one writer at a time when a heartbeat task exists."""
    if lock is None:
        await client.send_raw(framed)
    else:
        async with lock:
            await client.send_raw(framed)


async def _heartbeats(
    client: Downstream,
    tap: Tap,
    lock: anyio.Lock,
    interval: float,
    relay: Relay,
    scope: anyio.CancelScope,
) -> None:
    comment = encode_comment("heartbeat")
    try:
        while True:
            await anyio.sleep(max(0.0, client.last_write + interval - time.monotonic()))
            async with lock:
                if heartbeat_due(
                    now=time.monotonic(),
                    last_write=client.last_write,
                    interval=interval,
                    at_boundary=tap.at_boundary,
                ):
                    await client.send_data(comment)
            if not tap.at_boundary:
                # Mid-event: look again shortly rather than insert into the event.
                await anyio.sleep(min(interval, 0.05))
    except ClientGone:
        if relay.open:
            relay.on(Input.CLIENT_GONE)
        scope.cancel()
