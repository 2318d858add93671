"""Client side of HTTP/1.1 over h11: TCP or TLS, optionally through an HTTP CONNECT proxy.

The proxy talks to its upstream with this, and ``ssekit.client`` to a server.
Every anyio, OSError, ssl and h11 failure is translated here, in one place,
into :class:`ssekit.UpstreamError` carrying the status to answer (502, or 504
for timeouts), chained to the original.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from typing import Final, TypeAlias, cast

import anyio
import anyio.abc
import h11
from anyio.streams.tls import TLSStream

from .._errors import UpstreamError
from . import _stream
from ._chunked import ChunkedReader, ChunkError
from ._headers import get_header, head_size
from ._origin import Origin
from ._stream import FastStream, Stream, on_asyncio

__all__ = (
    "DEFAULT_MAX_HEAD_SIZE",
    "READ_SIZE",
    "OriginConnection",
    "OriginPool",
    "make_ssl_context",
    "open_connection",
)

READ_SIZE: Final = 256 * 1024
#: The largest response head accepted, however it arrives (then 502).
DEFAULT_MAX_HEAD_SIZE: Final = 64 * 1024


def make_ssl_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A client TLS context verifying certificates and host names (system store or ``ca_file``)."""
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


@contextlib.contextmanager
def _translated(what: str, origin: Origin) -> Iterator[None]:
    try:
        yield
    except UpstreamError:
        raise
    except TimeoutError as exc:
        raise UpstreamError(f"upstream {origin.authority}: timed out {what}", 504) from exc
    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, ssl.SSLError) as exc:
        raise UpstreamError(f"upstream {origin.authority}: {what} failed: {exc!r}", 502) from exc
    except anyio.EndOfStream as exc:
        raise UpstreamError(
            f"upstream {origin.authority} closed the connection {what}", 502
        ) from exc
    except h11.ProtocolError as exc:
        raise UpstreamError(f"upstream {origin.authority}: bad HTTP {what}: {exc}", 502) from exc


async def _tcp(host: str, port: int) -> Stream:
    """A TCP connection with TCP_NODELAY: a :class:`FastStream` on asyncio, else anyio's."""
    if on_asyncio():
        return await _stream.connect(host, port)
    stream = await anyio.connect_tcp(host, port)
    stream.extra(anyio.abc.SocketAttribute.raw_socket).setsockopt(
        socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
    )
    return stream


async def _tunnel(proxy: Origin, origin: Origin, connect_timeout: float) -> Stream:
    """Open a CONNECT tunnel to ``origin`` through the HTTP proxy ``proxy``."""
    stream = await _tcp(proxy.host, proxy.port)
    try:
        target = f"{origin.host}:{origin.port}".encode()
        await stream.send(b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n")
        head = b""
        with anyio.fail_after(connect_timeout):
            while b"\r\n\r\n" not in head:
                head += await stream.receive(4096)
                if len(head) > 65536:
                    raise UpstreamError(f"proxy {proxy.authority}: CONNECT reply too long", 502)
        status_line = head.split(b"\r\n", 1)[0]
        parts = status_line.split()
        if len(parts) < 2 or parts[1] != b"200":
            raise UpstreamError(
                f"proxy {proxy.authority} refused CONNECT {target.decode()}: "
                f"{status_line.decode(errors='replace')}",
                502,
            )
        if head.index(b"\r\n\r\n") + 4 != len(head):
            raise UpstreamError(f"proxy {proxy.authority} sent bytes after its CONNECT reply", 502)
    except BaseException:
        await stream.aclose()
        raise
    return stream


async def open_connection(
    origin: Origin,
    *,
    connect_timeout: float,
    ssl_context: ssl.SSLContext | None = None,
    proxy: Origin | None = None,
    max_head_size: int = DEFAULT_MAX_HEAD_SIZE,
) -> OriginConnection:
    """Connect to ``origin`` (TLS for https, through ``proxy`` when given).

    Raises :class:`UpstreamError` (502 connect failure, 504 timeout).
    """
    with _translated("connecting", origin):
        with anyio.fail_after(connect_timeout):
            if proxy is not None:
                raw = await _tunnel(proxy, origin, connect_timeout)
            else:
                raw = await _tcp(origin.host, origin.port)
            sock = raw.extra(anyio.abc.SocketAttribute.raw_socket, None)
            if origin.scheme == "https":
                context = ssl_context or make_ssl_context()
                try:
                    if isinstance(raw, FastStream):
                        raw = await _stream.start_tls(raw, context, origin.host)
                    else:
                        raw = await TLSStream.wrap(
                            raw,
                            hostname=origin.host,
                            ssl_context=context,
                            standard_compatible=False,
                        )
                except BaseException:
                    await raw.aclose()
                    raise
    return OriginConnection(raw, origin, sock, max_head_size=max_head_size)


def _chunked_body(response: h11.Response) -> bool | None:
    """For a chunked response, whether the connection may carry another exchange after
    it; None when the body is not chunked (or has none)."""
    if response.status_code in (204, 304):
        return None
    coding = get_header(response.headers, b"transfer-encoding")
    if coding is None or coding.split(b",")[-1].strip().lower() != b"chunked":
        return None
    connection = (get_header(response.headers, b"connection") or b"").lower()
    return response.http_version == b"1.1" and b"close" not in connection


def _read_to_close(response: h11.Response) -> bool:
    """True when the response body has no length and ends only when the origin closes."""
    if response.status_code in (204, 304):
        return False
    headers = response.headers
    return get_header(headers, b"transfer-encoding") is None and (
        get_header(headers, b"content-length") is None
    )


class OriginConnection:
    """One HTTP/1.1 connection to an origin server, driven by h11.

    Use: ``send_request`` (head and body), ``receive_response`` (head), then
    ``receive_body`` to the end; ``reusable()`` says whether it may go back to
    a pool. Every failure raises :class:`UpstreamError`. A response head over
    ``max_head_size`` bytes is refused (502) whether it came in one read or many.
    """

    def __init__(
        self,
        stream: Stream,
        origin: Origin,
        sock: socket.socket | None = None,
        *,
        max_head_size: int = DEFAULT_MAX_HEAD_SIZE,
    ) -> None:
        self._stream = stream
        self._origin = origin
        self._sock = sock
        self._max_head_size = max_head_size
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_head_size)
        #: Bytes of this exchange's request written so far (0: safe to retry).
        self.bytes_sent = 0
        #: Bytes read since this exchange's request began (0: no answer at all).
        self.bytes_received = 0
        # After a chunked response head: whether the connection may be kept once
        # the body ends cleanly (None: h11 reads the body).
        self._chunked: bool | None = None
        #: The last response's body has no length: it ends when the origin closes.
        self.read_to_close = False

    async def _send(self, event: h11.Event, stall_limit: float | None) -> None:
        data = self._h11.send(event)
        if data:
            await _stream.send(self._stream, data, stall_limit)
            self.bytes_sent += len(data)

    async def send_request(
        self,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterable[bytes] = b"",
        *,
        stall_limit: float | None = None,
    ) -> None:
        """Send the request head, then the body (streamed when an async iterable).

        An origin that takes none of it for ``stall_limit`` seconds while a
        write waits is an :class:`UpstreamError` 504 (None: wait as long as it takes).
        """
        self.bytes_sent = self.bytes_received = 0
        with _translated("sending the request", self._origin):
            request = h11.Request(method=method, target=target, headers=headers)
            await self._send(request, stall_limit)
            if isinstance(body, bytes):
                if body:
                    await self._send(h11.Data(data=body), stall_limit)
            else:
                async for piece in body:
                    if piece:
                        await self._send(h11.Data(data=piece), stall_limit)
            await self._send(h11.EndOfMessage(), stall_limit)

    async def _next_event(
        self, idle_timeout: float | None = None, deadline: float | None = None
    ) -> h11.Event | type[h11.PAUSED]:
        """The next h11 event; each read waits at most ``idle_timeout``, or until
        ``deadline`` (``time.monotonic()``): then ``TimeoutError``."""
        while True:
            event = self._h11.next_event()
            if event is not h11.NEED_DATA:
                return cast("h11.Event | type[h11.PAUSED]", event)
            limit = idle_timeout
            if deadline is not None:
                limit = deadline - time.monotonic()
                if limit <= 0:
                    raise TimeoutError
            try:
                # The per-chunk path: a timer only while a read really waits.
                data = await _stream.receive(self._stream, READ_SIZE, limit)
            except anyio.EndOfStream:
                data = b""
            self.bytes_received += len(data)
            self._h11.receive_data(data)

    async def receive_response(self, *, first_byte_timeout: float) -> h11.Response:
        """Wait up to ``first_byte_timeout`` for the response head (1xx skipped)."""
        deadline = time.monotonic() + first_byte_timeout
        with _translated("waiting for the response head", self._origin):
            while True:
                event = await self._next_event(deadline=deadline)
                if isinstance(event, h11.Response | h11.InformationalResponse):
                    size = head_size(event.reason, event.headers)
                    if size > self._max_head_size:
                        raise UpstreamError(
                            f"upstream {self._origin.authority} sent a response head of "
                            f"{size} bytes, over the limit of {self._max_head_size}",
                            502,
                        )
                if isinstance(event, h11.Response):
                    self._chunked = _chunked_body(event)
                    self.read_to_close = _read_to_close(event)
                    return event
                if isinstance(event, h11.ConnectionClosed):
                    raise UpstreamError(
                        f"upstream {self._origin.authority} closed the connection before answering",
                        502,
                    )
                if not isinstance(event, h11.InformationalResponse):
                    raise UpstreamError(f"unexpected {event!r} from upstream", 502)

    async def receive_body(self, *, idle_timeout: float) -> AsyncIterator[bytes]:
        """Yield the body as it arrives, one item per upstream chunk.

        Ends at the end of the message. Raises :class:`UpstreamError` when no
        byte arrives for ``idle_timeout`` (504) or the upstream closes before
        the end (502, the stream was cut).
        """
        async for batch in self.receive_body_batches(idle_timeout=idle_timeout):
            for chunk in batch:
                yield chunk

    async def receive_body_batches(self, *, idle_timeout: float) -> AsyncIterator[list[bytes]]:
        """Like :meth:`receive_body`, but every chunk one read completed comes in one list.

        A relay writes each list in one socket write (each chunk still its own
        HTTP chunk): no added latency, since the bytes were all here already.
        A chunked body is read by ssekit's own :class:`ChunkedReader` (a chunk
        arriving over several reads is held whole up to MAX_CHUNK_HOLD); a body
        with a Content-Length or read to close by h11, as it comes. What arrived
        before a framing error is yielded before the error is raised.
        """
        if self._chunked is not None:
            async for chunks in self._receive_chunked(idle_timeout):
                yield chunks
            return
        while True:
            events: list[h11.Event | type[h11.PAUSED]] = []
            failure: UpstreamError | None = None
            with _translated("reading the body", self._origin):
                try:
                    events.append(await self._next_event(idle_timeout))
                    # Everything else this read already delivered, without waiting.
                    while isinstance(events[-1], h11.Data):
                        event = self._h11.next_event()
                        if event is h11.NEED_DATA:
                            break
                        events.append(cast("h11.Event", event))
                except h11.RemoteProtocolError as exc:
                    failure = UpstreamError(
                        f"upstream {self._origin.authority} closed the connection mid-body "
                        f"(the response was cut: {exc})",
                        502,
                    )
                    failure.__cause__ = exc
            batch: list[bytes] = []
            ended = False
            for event in events:
                if isinstance(event, h11.Data):
                    batch.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    ended = True
                else:
                    failure = UpstreamError(
                        f"upstream {self._origin.authority} closed the connection mid-body "
                        "(the response was cut)",
                        502,
                    )
            if batch:
                yield batch
            if failure is not None:
                raise failure
            if ended:
                return

    async def _receive_chunked(self, idle_timeout: float) -> AsyncIterator[list[bytes]]:
        reader = ChunkedReader()
        data, closed = self._h11.trailing_data  # body bytes h11 read past the head
        stream = self._stream
        while True:
            try:
                chunks = reader.feed(bytes(data)) if data else []
            except ChunkError as exc:
                raise UpstreamError(
                    f"upstream {self._origin.authority} sent a malformed chunked body "
                    f"(the response was cut: {exc})",
                    502,
                ) from exc
            if chunks:
                yield chunks
            if reader.done:
                # Clean end: a next request may follow on a fresh h11 state,
                # unless bytes came after the body or either side wants a close.
                self._chunked = not reader.leftover and self._chunked
                return
            if closed:
                raise UpstreamError(
                    f"upstream {self._origin.authority} closed the connection mid-body "
                    "(the response was cut)",
                    502,
                )
            with _translated("reading the body", self._origin):
                try:
                    data = await _stream.receive(stream, READ_SIZE, idle_timeout)
                except anyio.EndOfStream:
                    data, closed = b"", True
            self.bytes_received += len(data)

    @property
    def spliceable(self) -> bool:
        """True when :meth:`splice_chunked` can read this response's body."""
        return self._chunked is not None and isinstance(self._stream, FastStream)

    async def splice_chunked(
        self, deliver: Deliver, *, idle_timeout: float, caught_up: Callable[[], None]
    ) -> None:
        """Read a chunked body inside the transport's read callback (when :attr:`spliceable`).

        ``deliver(chunks, resume, last)`` is called, in that callback, with
        the chunks each read completed (the same lists
        :meth:`receive_body_batches` yields) and whether that read also ended
        the body: no task wakes per read. It must not wait. It returns False
        when its reader cannot take more: reading then pauses (TCP pushes back
        on the upstream) until it calls ``resume``. What it raises ends the
        body and is raised here. ``caught_up()`` is called once what had
        already arrived is delivered (before the body goes on, ends or
        fails). Returns at the end of the body; raises :class:`UpstreamError`
        as :meth:`receive_body_batches` does.
        """
        stream = self._stream
        assert isinstance(stream, FastStream)
        assert self._chunked is not None
        splice = _Splice(self, deliver, idle_timeout)
        data, closed = self._h11.trailing_data  # body bytes h11 read past the head
        queued, eof = stream.divert(splice)
        try:
            splice.received(bytes(data), count=False)
            splice.received(queued)
            if closed or eof:
                splice.ended(None)
            caught_up()
            await splice.done
        finally:
            stream.divert(None)
            splice.stop()
        # Clean end: as in _receive_chunked.
        self._chunked = not splice.reader.leftover and self._chunked

    def reusable(self) -> bool:
        """True when both sides finished the exchange and may keep the connection."""
        if self._chunked is not None:
            # The body was read past h11: start the next exchange on a fresh state.
            keep = self._chunked and self._h11.our_state is h11.DONE
            self._chunked = None
            self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=self._max_head_size)
            return keep
        if self._h11.our_state is not h11.DONE or self._h11.their_state is not h11.DONE:
            return False
        try:
            self._h11.start_next_cycle()
        except h11.LocalProtocolError:
            return False
        return True

    def is_stale(self) -> bool:
        """True when the origin already closed an idle kept-alive connection.

        An idle HTTP connection has nothing to read: EOF, an error or any byte
        means it cannot carry another request. ``poll`` works for any descriptor
        number (``select`` fails at 1024 and above).
        """
        if isinstance(self._stream, FastStream) and not self._stream.quiet:
            return True  # it reads on while idle: what came is already queued
        if self._sock is None:
            return False
        try:
            poller = select.poll()
            poller.register(self._sock.fileno(), select.POLLIN | select.POLLPRI)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True

    async def aclose(self) -> None:
        """Close at once (no TLS close_notify wait), never raising."""
        await _stream.close_now(self._stream)


#: ``deliver(chunks, resume, last)`` of :meth:`OriginConnection.splice_chunked`.
Deliver: TypeAlias = Callable[[list[bytes], Callable[[], None], bool], bool]


class _Splice:
    """The sink of :meth:`OriginConnection.splice_chunked`: parse, deliver, watch the clock."""

    __slots__ = (
        "_conn",
        "_deliver",
        "_idle",
        "_last_read",
        "_loop",
        "_paused",
        "_stream",
        "_timer",
        "done",
        "reader",
    )

    def __init__(self, conn: OriginConnection, deliver: Deliver, idle: float) -> None:
        self._conn = conn
        assert isinstance(conn._stream, FastStream)
        self._stream = conn._stream
        self._deliver = deliver
        self._idle = idle
        self._loop = asyncio.get_running_loop()
        self.reader = ChunkedReader()
        self.done: asyncio.Future[None] = self._loop.create_future()
        self._paused = False  # reading paused for the reader: that silence is not the origin's
        self._last_read = self._loop.time()
        # One timer for the idle limit, moved on lazily when it fires (not per read).
        self._timer: asyncio.TimerHandle | None = self._loop.call_at(
            self._last_read + idle, self._check_idle
        )

    def received(self, data: bytes, *, count: bool = True) -> None:
        if self.done.done() or not data:
            if data and self.reader.done:
                self.reader.leftover += data  # after the body: the connection is not reused
            return
        if count:
            self._conn.bytes_received += len(data)
            self._last_read = self._loop.time()
        try:
            chunks = self.reader.feed(data)
        except ChunkError as exc:
            self._fail(self._cut(f" sent a malformed chunked body (the response was cut: {exc})"))
            return
        if chunks:
            try:
                more = self._deliver(chunks, self.resume, self.reader.done)
            except Exception as exc:
                self._fail(exc)
                return
            if not more:
                self._paused = True
                self._stream.pause_reading()
        if self.reader.done:
            self.done.set_result(None)

    def resume(self) -> None:
        """The reader drained: read on (a no-op once this body ended)."""
        if not self.done.done():
            self._paused = False
            self._last_read = self._loop.time()  # the idle limit counts from here
            self._stream.resume_reading()

    def ended(self, error: BaseException | None) -> None:
        if not self.done.done():
            what = " closed the connection mid-body (the response was cut)"
            if error is not None and not isinstance(error, ConnectionResetError):
                what = f": reading the body failed: {error!r}"
            self._fail(self._cut(what))

    def _cut(self, what: str) -> UpstreamError:
        return UpstreamError(f"upstream {self._conn._origin.authority}{what}", 502)

    def _check_idle(self) -> None:
        self._timer = None
        if self.done.done():
            return
        now = self._loop.time()
        if self._paused:
            self._last_read = now  # no read is waiting: the origin is not silent
        due = self._last_read + self._idle
        if now >= due:
            error = UpstreamError(
                f"upstream {self._conn._origin.authority}: timed out reading the body", 504
            )
            self._fail(error)
        else:
            self._timer = self._loop.call_at(due, self._check_idle)

    def _fail(self, error: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(error)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.done.done():
            self.done.cancel()
        elif not self.done.cancelled():
            self.done.exception()  # retrieved: an error nobody waits for any more is no news


class OriginPool:
    """Idle kept-alive connections to one origin, at most ``size``, newest reused first."""

    def __init__(
        self,
        origin: Origin,
        *,
        size: int,
        connect_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        proxy: Origin | None = None,
        max_head_size: int = DEFAULT_MAX_HEAD_SIZE,
    ) -> None:
        self._origin = origin
        self._max_head_size = max_head_size
        self._size = size
        self._connect_timeout = connect_timeout
        self._ssl_context = ssl_context
        self._proxy = proxy
        self._idle: list[OriginConnection] = []
        self.opened = 0

    async def acquire(self, *, reuse: bool = True) -> tuple[OriginConnection, bool]:
        """An idle connection that is still open (when ``reuse``), else a new one; and
        whether it was reused."""
        while reuse and self._idle:
            conn = self._idle.pop()
            if not conn.is_stale():
                return conn, True
            await conn.aclose()
        conn = await open_connection(
            self._origin,
            connect_timeout=self._connect_timeout,
            ssl_context=self._ssl_context,
            proxy=self._proxy,
            max_head_size=self._max_head_size,
        )
        self.opened += 1
        return conn, False

    async def release(self, conn: OriginConnection) -> None:
        """Keep ``conn`` for reuse when its exchange ended cleanly; close it otherwise."""
        if len(self._idle) < self._size and conn.reusable():
            self._idle.append(conn)
        else:
            await conn.aclose()

    async def aclose(self) -> None:
        while self._idle:
            await self._idle.pop().aclose()
