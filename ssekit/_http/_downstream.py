"""Server side of HTTP/1.1: one client connection, its reads, writes and answers.

The proxy serves its clients with this and the mock upstream its callers. Reads
and writes that fail because the peer went away raise :class:`ClientGone`; a
request the peer framed wrongly, or sent too slowly, raises :class:`BadRequest`
with the status to answer. Both are the peer's doing, never an upstream's.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Final

import anyio
import anyio.abc

from . import _stream
from ._engine import ServerSide, server_connection
from ._headers import Headers
from ._server import RequestError, Signal
from ._stream import FastStream, Stream
from ._wire import RequestHead, declared_framing

__all__ = (
    "JSON",
    "REASONS",
    "BadRequest",
    "ClientGone",
    "Downstream",
    "error_body",
    "raw_response",
)

JSON: Final = b"application/json"
#: Reason phrases (RFC 9110 15) of the statuses the proxy and the mock answer themselves.
REASONS: Final = {
    100: "Continue",
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}
#: What one read from a client may take: a head is bounded by ``max_header_size`` besides.
CLIENT_READ_SIZE: Final = 64 * 1024


class ClientGone(Exception):
    """The client closed or reset its side; the exchange cannot answer any more."""


class BadRequest(Exception):
    """The client's request is malformed or too slow: answer ``status`` if still possible."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


def error_body(status: int, message: str) -> bytes:
    """A JSON error body in OpenAI's shape, so SDKs surface the message."""
    kind = "proxy_error" if status >= 500 else "invalid_request_error"
    return json.dumps(
        {"error": {"message": message, "type": kind, "param": None, "code": status}}
    ).encode()


def raw_response(status: int, body: bytes, content_type: bytes = JSON) -> bytes:
    """A complete ``Connection: close`` response, for answers outside the connection's state
    (a request too broken to have one)."""
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n"
        b"via: 1.1 ssekit\r\n\r\n" % (status, _reason(status), content_type, len(body))
    ) + body


def _reason(status: int) -> bytes:
    return REASONS.get(status, "").encode()


class Downstream:
    """One client connection: the socket, its HTTP state, and the address it came from."""

    __slots__ = (
        "_body_size",
        "addr",
        "conn",
        "last_write",
        "max_body_size",
        "send_timeout",
        "stalled",
        "stream",
    )

    def __init__(
        self,
        stream: Stream,
        max_header_size: int,
        send_timeout: float | None = None,
        *,
        max_header_count: int | None = None,
        max_body_size: int = 0,
        engine: str = "ssekit",
    ) -> None:
        self.stream = stream
        #: The largest request body accepted, declared or sent (then 413); 0: no limit.
        self.max_body_size = max_body_size
        self._body_size = 0  # body bytes of the current request so far
        #: A write the client takes none of for this long cuts it (None: no limit).
        self.send_timeout = send_timeout
        #: True once the client was cut for taking nothing (see :meth:`cut_stalled`).
        self.stalled = False
        #: Its HTTP/1.1 state, on ``engine`` (``_engine.ENGINES``: ssekit's own, or h11).
        self.conn: ServerSide = server_connection(engine, max_header_size, max_header_count)
        addr = stream.extra(anyio.abc.SocketAttribute.remote_address, ("?", 0))
        self.addr = str(addr[0]) if isinstance(addr, tuple) else str(addr)
        self.last_write = time.monotonic()

    async def send_response(
        self, status: int, headers: Headers, reason: bytes | None = None
    ) -> None:
        """Write the final response head (``reason`` None: the status's usual phrase);
        raises :class:`ClientGone` when the client went away."""
        phrase = _reason(status) if reason is None else reason
        await self.send_raw(self.conn.send_response(status, headers, phrase))

    async def send_data(self, data: bytes) -> None:
        """Write body bytes, framed for the client (an empty piece writes nothing)."""
        framed = self.conn.send_data(data)
        if framed:
            await self.send_raw(framed)

    async def send_end(self) -> None:
        """End the response body (the last chunk, when chunked)."""
        framed = self.conn.send_end()
        if framed:
            await self.send_raw(framed)

    async def send_raw(self, data: bytes) -> None:
        try:
            await _stream.send(self.stream, data, self.send_timeout)
        except TimeoutError:
            self.cut_stalled()
            await _stream.close_now(self.stream)  # anyio's streams close here
            raise ClientGone from None
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise ClientGone from exc
        self.last_write = time.monotonic()

    def cut_stalled(self) -> None:
        """Drop a client that took none of the response for ``send_timeout`` (callable
        from a transport callback: a :class:`FastStream` is aborted at once)."""
        self.stalled = True
        if isinstance(self.stream, FastStream):
            self.stream.abort()

    def write_now(self, data: bytes, on_drained: Callable[[], None]) -> bool:
        """Write without waiting (a :class:`FastStream` only); False when the client's
        buffer is now over its limit: ``on_drained`` is called when it has room."""
        assert isinstance(self.stream, FastStream)
        try:
            room = self.stream.write_now(data, on_drained)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise ClientGone from exc
        self.last_write = time.monotonic()
        return room

    async def receive(self, limit: float | None = None) -> bytes:
        """One read from the client (b"" at EOF), waiting at most ``limit`` seconds (then
        ``TimeoutError``); raises :class:`ClientGone` on a reset."""
        try:
            return await _stream.receive(self.stream, CLIENT_READ_SIZE, limit)
        except anyio.EndOfStream:
            return b""
        except TimeoutError:
            raise  # an OSError, but not the peer going away
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise ClientGone from exc

    async def next_event(
        self, read_timeout: float | None = None, *, deadline: float | None = None
    ) -> RequestHead | bytes | Signal:
        """The next request head, body piece, or :class:`Signal` (never NEED_DATA), reading
        as needed.

        Waits at most ``read_timeout`` seconds for each read (then
        :class:`BadRequest` 408), or until ``deadline`` (``time.monotonic()``;
        then ``TimeoutError``). A malformed request raises :class:`BadRequest`
        400; a reset :class:`ClientGone`.
        """
        while True:
            try:
                event = self.conn.next_event()
            except RequestError as exc:
                raise BadRequest(exc.status, str(exc)) from exc
            if event is not Signal.NEED_DATA:
                if self.max_body_size:
                    self._check_body_size(event)
                return event
            if deadline is not None:
                data = await self.receive(max(0.0, deadline - time.monotonic()))
            else:
                try:
                    data = await self.receive(read_timeout)
                except TimeoutError:
                    raise BadRequest(
                        408, f"no byte of the request for {read_timeout:g}s (--body-timeout)"
                    ) from None
            self.conn.receive_data(data)

    def _check_body_size(self, event: RequestHead | bytes | Signal) -> None:
        """413 for a request whose declared length, or whose body so far, passes
        ``max_body_size``: at the head when it is declared, nothing forwarded."""
        if isinstance(event, RequestHead):
            self._body_size = 0
            chunked, length = declared_framing(event.headers)
            size = 0 if chunked or length is None else length
        elif isinstance(event, bytes):
            self._body_size += len(event)
            size = self._body_size
        else:
            return
        if size > self.max_body_size:
            raise BadRequest(
                413,
                f"request body of {size} bytes or more, over the limit of "
                f"{self.max_body_size} (--max-body-size)",
            )

    async def body(self, read_timeout: float | None = None) -> AsyncIterator[bytes]:
        """The request body's pieces as they arrive, after a ``100 Continue`` if the client
        waits for one. Each read waits at most ``read_timeout`` (then :class:`BadRequest`
        408); a body that stops early raises :class:`BadRequest` 400."""
        await self.continue_if_expected()
        while True:
            event = await self.next_event(read_timeout)
            if event is Signal.END:
                return
            if not isinstance(event, bytes):
                raise BadRequest(400, "request body ended early")
            yield event

    async def wait_gone(self, max_held: int) -> None:
        """Return when the client goes away (EOF or reset).

        Bytes it sends meanwhile (a pipelined next request) are kept for the next, up
        to about ``max_held``; past that it is no longer read (TCP pushes back on
        it) and this never returns: a departure is then noticed at the next write.
        """
        held = 0
        while held <= max_held:
            try:
                data = await self.receive()
            except ClientGone:
                return
            if not data:
                return
            held += len(data)
            self.conn.receive_data(data)
        await anyio.sleep_forever()

    async def continue_if_expected(self) -> None:
        """Send ``100 Continue`` when the client waits for it before sending its body."""
        if self.conn.waiting_for_100:
            await self.send_raw(self.conn.send_informational(100, []))

    async def answer(
        self, status: int, body: bytes, content_type: bytes = JSON, *, close: bool = False
    ) -> None:
        """A whole response with a body; ``close`` ends the connection after it."""
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
        headers.append((b"via", b"1.1 ssekit"))
        if close:
            headers.append((b"connection", b"close"))
        conn = self.conn
        head = conn.send_response(status, headers, _reason(status))
        await self.send_raw(head + conn.send_data(body) + conn.send_end())
