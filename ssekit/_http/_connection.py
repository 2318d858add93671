"""Client side of HTTP/1.1: TCP or TLS, optionally through an HTTP CONNECT proxy.

The proxy talks to its upstream with this, and ``ssekit.client`` to a server.
Every anyio, OSError, ssl and HTTP framing failure is translated here, in one place,
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
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Final, TypeAlias

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream

from .._errors import LimitExceeded, UpstreamError
from . import _stream
from ._chunked import LAST_CHUNK, ChunkedReader, ChunkError, frame_chunk
from ._engine import check_engine, origin_engine
from ._headers import Headers
from ._origin import Origin
from ._stream import FastStream, Stream, on_asyncio
from ._wire import (
    ResponseHead,
    WireError,
    body_framing,
    check_length,
    declared_framing,
    has_blank_line,
    keep_alive,
    parse_response_head,
    request_head,
)

if TYPE_CHECKING:
    from ._h11 import H11Origin

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
def _translated(what: str, origin: Origin, *, cut: bool = False) -> Iterator[None]:
    """Translate what fails inside into :class:`UpstreamError`, chained; ``cut``: the
    response body was under way (its head went on already)."""
    try:
        yield
    except UpstreamError:
        raise
    except TimeoutError as exc:
        raise UpstreamError(f"upstream {origin.authority}: timed out {what}", 504, cut=cut) from exc
    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, ssl.SSLError) as exc:
        raise UpstreamError(
            f"upstream {origin.authority}: {what} failed: {exc!r}", 502, cut=cut
        ) from exc
    except anyio.EndOfStream as exc:
        raise UpstreamError(
            f"upstream {origin.authority} closed the connection {what}", 502, cut=cut
        ) from exc
    except WireError as exc:
        raise UpstreamError(
            f"upstream {origin.authority}: bad HTTP {what}: {exc}", 502, cut=cut
        ) from exc


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
        code = (status_line.split()[1:2] or [b""])[0]
        # RFC 9110 9.3.6: any 2xx means the tunnel is open.
        if not (len(code) == 3 and code.isdigit() and code.startswith(b"2")):
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
    engine: str = "ssekit",
) -> OriginConnection:
    """Connect to ``origin`` (TLS for https, through ``proxy`` when given), to speak
    HTTP/1.1 on ``engine`` (``_engine.ENGINES``).

    Raises :class:`UpstreamError` (502 connect failure, 504 timeout); :class:`ConfigError`
    for an unknown engine, before connecting.
    """
    check_engine(engine)
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
    return OriginConnection(raw, origin, sock, max_head_size=max_head_size, engine=engine)


class _WireRequest:
    """A request's head and body framing by ssekit's own rules (:mod:`._wire`), checked
    before any byte goes: one Host, fields that read back as sent, a body exactly its
    Content-Length (none given: no body) unless it goes chunked."""

    __slots__ = ("_chunked", "_length", "_sent", "keep")

    def __init__(self) -> None:
        self._chunked = False
        self._length: int | None = None
        self._sent = 0
        #: The request allows another exchange (HTTP/1.1, no ``Connection: close``).
        self.keep = False

    def request(self, method: str, target: str, headers: Headers) -> bytes:
        """The request head's bytes; the body follows through :meth:`data` and :meth:`end`."""
        head = request_head(method, target, headers)
        self._chunked, self._length = declared_framing(headers)
        self._sent = 0
        self.keep = keep_alive(b"1.1", headers)
        return head

    def data(self, piece: bytes) -> bytes:
        """Request body bytes, framed as the request's fields say."""
        if self._chunked:
            return frame_chunk(piece) if piece else b""
        self._sent += len(piece)
        check_length(self._length, self._sent)
        return piece

    def end(self) -> bytes:
        """The end of the request body (raises when it is short of its Content-Length)."""
        if self._chunked:
            return LAST_CHUNK
        check_length(self._length, self._sent, final=True)
        return b""


class OriginConnection:
    """One HTTP/1.1 connection to an origin server.

    Use: ``send_request`` (head and body), ``receive_response`` (head), then
    ``receive_body`` to the end; ``reusable()`` says whether it may go back to
    a pool. Every failure raises :class:`UpstreamError`. A response head over
    ``max_head_size`` bytes is refused (502) whether it came in one read or many.

    ``engine`` (``_engine.ENGINES``) chooses who frames and reads the messages:
    ssekit's own (:mod:`._wire` heads, :mod:`._chunked` bodies, called here
    directly), or h11 (:class:`~ssekit._http._h11.H11Origin`, sans-IO). The I/O,
    its deadlines and its errors are this class's, the same for both. A chunked
    body can be spliced (:meth:`splice_chunked`) on ssekit's engine only.
    """

    def __init__(
        self,
        stream: Stream,
        origin: Origin,
        sock: socket.socket | None = None,
        *,
        max_head_size: int = DEFAULT_MAX_HEAD_SIZE,
        engine: str = "ssekit",
    ) -> None:
        self._stream = stream
        self._origin = origin
        self._sock = sock
        self._max_head_size = max_head_size
        self._h11: H11Origin | None = origin_engine(engine, max_head_size)
        # Who frames the request: h11, or _wire's rules.
        self._framer: H11Origin | _WireRequest = self._h11 or _WireRequest()
        #: Bytes of this exchange's request written so far (0: safe to retry).
        self.bytes_sent = 0
        #: Bytes read since this exchange's request began (0: no answer at all).
        self.bytes_received = 0
        self._method = "GET"
        self._buffer = b""  # read, not yet parsed: the head, then the body's first bytes
        self._eof = False  # the origin closed its side after what is in _buffer
        # The response body's framing (_wire.body_framing), or ("h11", 0): h11 reads it.
        self._framing: tuple[str, int] = ("none", 0)
        self._keep = False  # both messages allow another exchange on this connection
        self._sent_all = False  # the request body went out whole
        self._ended = False  # the response body was read to its end
        self._leftover = False  # bytes came after the response body
        #: The last response's body has no length: it ends when the origin closes.
        self.read_to_close = False

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

        The body is framed as the headers say: chunked for ``Transfer-Encoding:
        chunked``, else exactly its ``Content-Length`` (none without either).
        An origin that takes none of it for ``stall_limit`` seconds while a
        write waits is an :class:`UpstreamError` 504 (None: wait as long as it takes).
        """
        self.bytes_sent = self.bytes_received = 0
        self._method = method
        self._sent_all = self._ended = self._leftover = False
        framer = self._framer
        with _translated("sending the request", self._origin):
            head = framer.request(method, target, headers)
            self._keep = framer.keep
            if isinstance(body, bytes):
                # Head and body in one write, framed (and checked) before any byte goes.
                await self._write(head + framer.data(body) + framer.end(), stall_limit)
            else:
                await self._write(head, stall_limit)
                async for piece in body:
                    if piece:
                        await self._write(framer.data(piece), stall_limit)
                await self._write(framer.end(), stall_limit)
        self._sent_all = True

    async def _write(self, data: bytes, stall_limit: float | None) -> None:
        await _stream.send(self._stream, data, stall_limit)
        self.bytes_sent += len(data)

    async def _read(self, limit: float | None) -> bytes:
        """One read into the buffer's place: what came (b"" once the origin closed)."""
        try:
            data = await _stream.receive(self._stream, READ_SIZE, limit)
        except anyio.EndOfStream:
            self._eof = True
            return b""
        self.bytes_received += len(data)
        return data

    async def receive_response(
        self,
        *,
        first_byte_timeout: float,
        informational: Callable[[ResponseHead], Awaitable[None]] | None = None,
    ) -> ResponseHead:
        """Wait up to ``first_byte_timeout`` for the final response head.

        Each 1xx head before it (but 101, never asked for: a 502) goes to
        ``informational`` when given (a proxy passes them on), else is passed over.
        """
        deadline = time.monotonic() + first_byte_timeout
        while True:
            with _translated("waiting for the response head", self._origin):
                head = await self._next_head(deadline)
            if head.status_code >= 200:
                break
            if informational is not None:
                await informational(head)
        h11 = self._h11
        # Both engines: HTTP/1.0, Connection: close, or a length beside a coding (_wire).
        self._keep = self._keep and keep_alive(head.http_version, head.headers)
        if h11 is not None:
            self._framing = ("h11", 0)
            self.read_to_close = h11.read_to_close
            with _translated("reading the body", self._origin):
                h11.feed(b"")  # a body that is empty (HEAD, 204, a length of 0) ends now
            if h11.done:
                self._body_end(self._buffer)
            return head
        self._framing = body_framing(self._method, head)
        kind = self._framing[0]
        self.read_to_close = kind == "close"
        if kind == "none":
            self._body_end(self._buffer)
        return head

    async def _next_head(self, deadline: float) -> ResponseHead:
        """The next response head. One arriving in many reads grows one bytearray and
        is parsed once its blank line is in: its size in work, never its square."""
        authority = self._origin.authority
        buffer: bytes | bytearray = self._buffer
        searched = -1  # how much of buffer holds no blank line (-1: not looked yet)
        while True:
            # A blank line first is refused by the parser at once, however it was cut.
            blank = buffer[:1] == b"\n" or buffer[:2] == b"\r\n"
            if searched < 0 or blank or has_blank_line(buffer, max(0, searched - 2)):
                data = bytes(buffer)
                h11 = self._h11
                parsed = parse_response_head(data) if h11 is None else h11.parse_head(data)
                if parsed is not None:
                    break
                buffer = bytearray(data) if searched < 0 else buffer
            searched = len(buffer)
            if len(buffer) > self._max_head_size:
                raise UpstreamError(
                    f"upstream {authority} sent a response head of over "
                    f"{len(buffer)} bytes, over the limit of {self._max_head_size}",
                    502,
                ) from self._head_limit(len(buffer))
            if self._eof:
                what = "in the middle of the response head" if buffer else "before answering"
                raise UpstreamError(f"upstream {authority} closed the connection {what}", 502)
            limit = deadline - time.monotonic()
            if limit <= 0:
                raise TimeoutError
            buffer += await self._read(limit)
        head, size = parsed
        if size > self._max_head_size:
            raise UpstreamError(
                f"upstream {authority} sent a response head of {size} bytes, "
                f"over the limit of {self._max_head_size}",
                502,
            ) from self._head_limit(size)
        self._buffer = data[size:]
        if head.status_code == 101:
            raise WireError("101 Switching Protocols, which the request did not ask for")
        return head

    def _head_limit(self, size: int) -> LimitExceeded:
        return LimitExceeded("response head", size, self._max_head_size, "--max-header-size")

    def _body_end(self, leftover: bytes) -> None:
        """The response body ended; bytes after it mean the connection is not reused."""
        self._ended = True
        self._leftover = bool(leftover)
        self._buffer = b""

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
        A chunked body is read by :class:`ChunkedReader` (a chunk arriving over
        several reads is held whole up to MAX_CHUNK_HOLD); a body with a
        Content-Length, or read to close, as it comes (one item per read).
        What arrived before a framing error is yielded before the error is raised.
        On h11's engine, h11 reads every body (a chunk held whole as above).
        """
        if self._ended:
            return
        kind, remaining = self._framing
        if kind == "chunked" or self._h11 is not None:
            reader = ChunkedReader(self._max_head_size) if self._h11 is None else self._h11
            async for chunks in self._receive_framed(reader, idle_timeout):
                yield chunks
            return
        data, self._buffer = self._buffer, b""
        while True:
            if data:
                if kind == "length":
                    piece, data = data[:remaining], data[remaining:]
                    remaining -= len(piece)
                else:
                    piece, data = data, b""
                yield [piece]
            if kind == "length" and remaining == 0:
                self._body_end(data)
                return
            if self._eof:
                if kind == "close":
                    self._body_end(b"")
                    return
                raise self._cut_mid_body()
            with _translated("reading the body", self._origin, cut=True):
                data = await self._read(idle_timeout)

    async def _receive_framed(
        self, reader: ChunkedReader | H11Origin, idle_timeout: float
    ) -> AsyncIterator[list[bytes]]:
        """The body as ``reader`` finds its pieces and its end, one list per read."""
        data, self._buffer = self._buffer, b""  # body bytes read with the head
        while True:
            try:
                chunks = reader.feed(data) if data else []
            except (ChunkError, WireError) as exc:
                raise self._malformed_body(exc) from exc
            if chunks:
                yield chunks
            if reader.done:
                # Clean end: a next request may follow, unless bytes came after
                # the body or either side wants a close.
                self._body_end(reader.leftover)
                return
            if self._eof:
                if self.read_to_close:  # h11 reading a body that ends with the connection
                    self._body_end(b"")
                    return
                raise self._cut_mid_body()
            with _translated("reading the body", self._origin, cut=True):
                data = await self._read(idle_timeout)

    def _cut_mid_body(self, error: BaseException | None = None) -> UpstreamError:
        """The origin closed (or the connection failed with ``error``) inside the body."""
        what = " closed the connection mid-body (the response was cut)"
        if error is not None and not isinstance(error, ConnectionResetError):
            what = f": reading the body failed: {error!r}"
        cut = UpstreamError(f"upstream {self._origin.authority}{what}", 502, cut=True)
        cut.__cause__ = error
        return cut

    def _malformed_body(self, error: ChunkError | WireError) -> UpstreamError:
        malformed = UpstreamError(
            f"upstream {self._origin.authority} sent a malformed chunked body "
            f"(the response was cut: {error})",
            502,
            cut=True,
        )
        malformed.__cause__ = error
        return malformed

    @property
    def spliceable(self) -> bool:
        """True when :meth:`splice_chunked` can read this response's body."""
        return self._framing[0] == "chunked" and isinstance(self._stream, FastStream)

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
        assert self._framing[0] == "chunked"
        splice = _Splice(self, deliver, idle_timeout)
        data, self._buffer = self._buffer, b""  # body bytes read with the head
        queued, eof = stream.divert(splice)
        try:
            splice.received(data, count=False)
            splice.received(queued)
            if self._eof or eof:
                splice.ended(None)
            caught_up()
            await splice.done
        finally:
            stream.divert(None)
            splice.stop()
        self._body_end(splice.reader.leftover)  # a clean end, as in _receive_chunked

    def reusable(self) -> bool:
        """True when both messages ended whole and allow another exchange; the
        connection is then ready for the next request."""
        keep = self._keep and self._sent_all and self._ended and not self._leftover
        keep = keep and not self._buffer and not self._eof
        if keep and self._h11 is not None:
            keep = self._h11.next_cycle()  # h11's verdict: both DONE, neither closing
        self._framing = ("none", 0)
        self._keep = self._sent_all = self._ended = False
        return keep

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
        self._loop = self._stream.loop
        self.reader = ChunkedReader(conn._max_head_size)
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
            self._fail(self._conn._malformed_body(exc))
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
            self._fail(self._conn._cut_mid_body(error))

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
                f"upstream {self._conn._origin.authority}: timed out reading the body",
                504,
                cut=True,
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
        engine: str = "ssekit",
    ) -> None:
        self._origin = origin
        self._max_head_size = max_head_size
        self._engine = check_engine(engine)
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
            engine=self._engine,
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
