"""A byte stream straight on an asyncio transport: the proxy's hot path without anyio's tolls.

anyio's asyncio ``SocketStream`` pays, per operation, an event-loop trip on every
send (a ``sleep(0)`` checkpoint), a pause and resume of reading (two
``epoll_ctl`` calls) around every wait in ``receive``, and a cancel scope per
deadline. This stream keeps reading on, into a queue bounded by ``HIGH_WATER``
(past it reading pauses, so TCP pushes back), returns queued data without
waiting, writes at once and waits only when the transport's buffer is over its
limit, and keeps one idle timer per stream that each wait only moves (no timer
per read). It still lives inside anyio: cancellation reaches its awaits as it
reaches any asyncio await.

It offers what the rest of ``ssekit._http`` uses of an anyio byte stream
(``receive``, ``send``, ``send_eof``, ``aclose``, ``extra``) and raises the same
exceptions (``anyio.EndOfStream``, ``BrokenResourceError``, ``ClosedResourceError``),
so either kind of stream fits under ``Downstream`` and ``OriginConnection``.
Used on the asyncio backend (uvloop included); elsewhere anyio's streams are.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol, TypeAlias, cast

import anyio
import anyio.abc

__all__ = (
    "FastStream",
    "Sink",
    "Stream",
    "accept",
    "close_now",
    "connect",
    "on_asyncio",
    "receive",
    "send",
    "start_tls",
)

#: Bytes queued from the peer before reading pauses (and TCP pushes back).
HIGH_WATER: Final = 256 * 1024
#: Bytes written but not yet taken by the kernel before ``send`` waits.
WRITE_HIGH_WATER: Final = 64 * 1024


def on_asyncio() -> bool:
    """True when running on an asyncio event loop (anyio's asyncio backend, uvloop included)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class Sink(Protocol):
    """Takes a diverted stream's reads in the transport's callback (``FastStream.divert``)."""

    def received(self, data: bytes) -> None: ...

    def ended(self, error: BaseException | None) -> None:
        """EOF (None) or the connection lost (its error)."""


class FastStream(asyncio.Protocol, anyio.abc.AsyncResource):
    """One TCP (or TLS) connection as a byte stream; see the module docstring."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()  # once: each lookup costs a getpid()
        self._transport: asyncio.Transport | None = None
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._eof = False
        self._lost: BaseException | None = None
        self._closed = False
        self._reading_paused = False
        self._readable: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._write_paused = False
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._sink: Sink | None = None
        self._on_drained: Callable[[], None] | None = None  # see write_now
        self._on_gone: Callable[[], None] | None = None  # see watch_gone
        self._watch_limit = 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop this stream runs on (looked up once: each lookup costs a getpid())."""
        return self._loop

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.Transport subclasses).
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(WRITE_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        if self._sink is not None:
            self._sink.received(data)
            return
        self._queue.append(data)
        self._queued += len(data)
        if self._queued >= HIGH_WATER or (
            self._on_gone is not None and self._queued > self._watch_limit
        ):
            self.pause_reading()  # TCP pushes back until the queue is read down
        self._wake_reader()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        self._gone()
        if self._sink is not None:
            self._sink.ended(None)
        # Keep a TCP transport open: we may still write (half-close). TLS cannot.
        transport = self._transport
        return transport is not None and transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()  # drops the loop's reference to this stream
            self._timer = None
        self._lost = exc or ConnectionResetError("connection lost")
        self._eof = True
        self._wake_reader()
        self._wake_writer()
        self._gone()
        if self._sink is not None:
            self._sink.ended(self._lost)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()
        if self._on_drained is not None:
            on_drained, self._on_drained = self._on_drained, None
            on_drained()

    def _gone(self) -> None:
        if self._on_gone is not None:
            on_gone, self._on_gone = self._on_gone, None
            on_gone()

    def _wake_reader(self) -> None:
        if self._readable is not None and not self._readable.done():
            self._readable.set_result(None)

    def _wake_writer(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # -- the stream --------------------------------------------------------

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Queued bytes at once, else wait for some; ``anyio.EndOfStream`` at EOF."""
        return await self.receive_within(max_bytes, None)

    async def receive_within(self, max_bytes: int, idle_limit: float | None) -> bytes:
        """Like :meth:`receive`, raising ``TimeoutError`` after ``idle_limit`` s without data.

        The timer exists only while the read really waits: queued data costs
        no clock read, no timer and no loop trip.
        """
        if not self._queue:
            if self._closed:
                raise anyio.ClosedResourceError
            if not self._eof:
                await self._wait_readable(idle_limit)
            if not self._queue:
                if self._closed:
                    raise anyio.ClosedResourceError
                if self._lost is not None and not isinstance(self._lost, ConnectionResetError):
                    raise anyio.BrokenResourceError from self._lost
                raise anyio.EndOfStream
        chunk = self._queue.popleft()
        if len(chunk) > max_bytes:
            chunk, rest = chunk[:max_bytes], chunk[max_bytes:]
            self._queue.appendleft(rest)
        self._queued -= len(chunk)
        if self._queued < HIGH_WATER // 2:
            self.resume_reading()
        return chunk

    async def _wait_readable(self, idle_limit: float | None) -> None:
        loop = self._loop
        waiter = self._readable = loop.create_future()
        if idle_limit is None:
            self._deadline = None
        else:
            # One timer per stream, re-armed lazily: a wait only moves the deadline;
            # the timer, when it fires, expires the wait or re-arms itself for it.
            deadline = self._deadline = loop.time() + idle_limit
            timer = self._timer
            if timer is None or timer.when() > deadline:  # none, or set for later than now due
                if timer is not None:
                    timer.cancel()
                self._timer = loop.call_at(deadline, self._check_deadline)
        try:
            await waiter
        finally:
            self._readable = None

    def _check_deadline(self) -> None:
        self._timer = None
        waiter, deadline = self._readable, self._deadline
        if waiter is None or waiter.done() or deadline is None:
            return  # not waiting under a deadline now: the next such wait re-arms
        loop = self._loop
        if loop.time() >= deadline:
            waiter.set_exception(TimeoutError())
        else:
            self._timer = loop.call_at(deadline, self._check_deadline)

    def _open_transport(self) -> asyncio.Transport:
        """The transport to write to; raises as anyio's streams do when there is none."""
        if self._closed:
            raise anyio.ClosedResourceError
        transport = self._transport
        if self._lost is not None or transport is None or transport.is_closing():
            raise anyio.BrokenResourceError from self._lost
        return transport

    async def send(self, data: bytes, /) -> None:
        """Write ``data``; wait only while the transport holds more than its limit."""
        await self.send_within(data, None)

    async def send_within(self, data: bytes, stall_limit: float | None) -> None:
        """Like :meth:`send`, raising ``TimeoutError`` when the peer takes nothing for
        ``stall_limit`` seconds while this write waits (None: no limit)."""
        self._open_transport().write(data)
        timer = None
        while self._write_paused and self._lost is None and not self._closed:
            waiter = self._writable = self._loop.create_future()
            if stall_limit is not None and timer is None:
                timer = self._loop.call_later(stall_limit, _expire, waiter)
            try:
                await waiter
            finally:
                self._writable = None
                if timer is not None and waiter.done():
                    timer.cancel()
                    timer = None
        if self._closed:
            raise anyio.ClosedResourceError
        if self._lost is not None:
            raise anyio.BrokenResourceError from self._lost

    def write_now(self, data: bytes, on_drained: Callable[[], None]) -> bool:
        """Write ``data`` without waiting; False when the transport now holds more than its
        limit: ``on_drained`` is then called once it has room. Raises as :meth:`send`."""
        self._open_transport().write(data)
        if self._write_paused:
            self._on_drained = on_drained
            return False
        return True

    # -- driven from the transport's callbacks, no task woken (the relay's hot path) --

    def watch_gone(self, on_gone: Callable[[], None] | None, max_held: int = 0) -> None:
        """Call ``on_gone`` (soon, from the loop) when the peer closes or the connection is
        lost; None stops watching. Bytes the peer sends meanwhile stay queued for the next
        read, up to about ``max_held``: past that it is no longer read (TCP pushes back on
        it), so its departure is only noticed at the next write."""
        self._on_gone = on_gone
        self._watch_limit = max_held
        if on_gone is not None and self._eof:
            self._loop.call_soon(self._gone)

    @property
    def quiet(self) -> bool:
        """Nothing came since the last read: no byte queued, no EOF, no error."""
        return not self._queue and not self._eof and self._lost is None

    def divert(self, sink: Sink | None) -> tuple[bytes, bool]:
        """Hand every read to ``sink`` as it arrives instead of queueing it; None: queue again.

        No task wakes per read: a relay parses and forwards in the callback.
        Returns what was queued (to be taken first) and whether EOF came.
        """
        self._sink = sink
        queued = b"".join(self._queue)
        self._queue.clear()
        self._queued = 0
        if self._reading_paused:
            self.resume_reading()
        return queued, self._eof

    def pause_reading(self) -> None:
        """Stop reading (TCP pushes back on the peer) until :meth:`resume_reading`."""
        if not self._reading_paused and self._transport is not None and self._lost is None:
            self._reading_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None and self._lost is None:
            self._reading_paused = False
            self._transport.resume_reading()

    async def send_eof(self) -> None:
        if self._transport is not None and self._transport.can_write_eof():
            self._transport.write_eof()

    async def aclose(self) -> None:
        """Close at once (abort: unsent bytes are dropped), never raising."""
        self.abort()

    def abort(self) -> None:
        """Close at once, from anywhere (a callback too): unsent bytes are dropped."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.abort()
        self._wake_reader()
        self._wake_writer()

    def extra(self, attribute: Any, default: Any = None) -> Any:
        """The few anyio socket attributes ssekit reads: addresses and the raw socket."""
        transport = self._transport
        if transport is None:
            return default
        if attribute is anyio.abc.SocketAttribute.remote_address:
            return transport.get_extra_info("peername", default)
        if attribute is anyio.abc.SocketAttribute.local_address:
            return transport.get_extra_info("sockname", default)
        if attribute is anyio.abc.SocketAttribute.raw_socket:
            return transport.get_extra_info("socket", default)
        return default


#: A byte stream ``ssekit._http`` reads and writes: anyio's, or a :class:`FastStream`.
Stream: TypeAlias = "anyio.abc.ByteStream | FastStream"


async def close_now(stream: Stream) -> None:
    """Close at once, never waiting (no TLS close_notify) and never raising."""
    with contextlib.suppress(Exception):
        if isinstance(stream, FastStream):
            await stream.aclose()  # aborts the transport; nothing to wait for
        else:
            await anyio.aclose_forcefully(stream)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


async def send(stream: Stream, data: bytes, stall_limit: float | None) -> None:
    """One write to either kind of stream, raising ``TimeoutError`` when the peer takes
    nothing for ``stall_limit`` seconds (None: no limit)."""
    if isinstance(stream, FastStream):
        await stream.send_within(data, stall_limit)
    elif stall_limit is None:
        await stream.send(data)
    else:
        with anyio.fail_after(stall_limit):
            await stream.send(data)


async def receive(stream: Stream, max_bytes: int, limit: float | None) -> bytes:
    """One read from either kind of stream, raising ``TimeoutError`` after ``limit`` seconds
    without data (None: no limit). A FastStream arms a timer only if it must wait."""
    if isinstance(stream, FastStream):
        return await stream.receive_within(max_bytes, limit)
    if limit is None:
        return await stream.receive(max_bytes)
    with anyio.fail_after(limit):
        return await stream.receive(max_bytes)


async def accept(listening: socket.socket) -> FastStream:
    """Accept one connection on a non-blocking listening socket; OSError as accept's.

    A connection already waiting is taken at once (a burst costs one ``accept4``
    each, no loop trip). TCP_NODELAY is set: an accepted socket does not inherit it.
    """
    loop = asyncio.get_running_loop()
    try:
        sock, _ = listening.accept()
    except BlockingIOError:
        try:
            sock, _ = await loop.sock_accept(listening)
        except asyncio.CancelledError:
            # A cancelled sock_accept can leave its reader behind (bpo-41317). RuntimeError:
            # a loop with no reader support says so with a RuntimeError subclass.
            with contextlib.suppress(ValueError, RuntimeError, OSError):
                loop.remove_reader(listening)
            raise
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _, protocol = await loop.connect_accepted_socket(FastStream, sock)
    except BaseException:
        sock.close()
        raise
    return protocol


async def connect(host: str, port: int) -> FastStream:
    """Open a TCP connection (TCP_NODELAY set, as asyncio does for TCP)."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(FastStream, host, port)
    return protocol


async def start_tls(stream: FastStream, context: ssl.SSLContext, hostname: str) -> FastStream:
    """Upgrade ``stream`` to TLS in place (after a CONNECT tunnel, or right away)."""
    assert stream._transport is not None
    assert not stream._queue, "bytes after the CONNECT reply were refused before this"
    loop = asyncio.get_running_loop()
    transport = await loop.start_tls(
        stream._transport, stream, context, server_hostname=hostname, ssl_handshake_timeout=None
    )
    stream._transport = tls = cast(asyncio.Transport, transport)
    tls.set_write_buffer_limits(WRITE_HIGH_WATER)
    return stream
