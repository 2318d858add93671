"""The server side's HTTP/1.1, sans-IO: requests in from a client, responses out.

The proxy serves its clients with this, and the mock upstream its callers. h11
did it before and cost about 50 us per exchange (its state machine, and each
response head validated three times over); the rules and the bytes on the wire
are still h11's, which are RFC 9112's, and ``tests/test_server.py`` holds both
to h11 on generated requests and responses:

- a request head as :func:`~ssekit._http._wire.parse_request_head` reads it; a
  head over ``max_head_size`` still incomplete is a 431;
- its body framed by Transfer-Encoding: chunked, else Content-Length, else none;
- a response body of unknown length (no Content-Length) goes chunked to an
  HTTP/1.1 client, and is ended by closing to an HTTP/1.0 one (RFC 9112 6.1, 6.3);
  ``Connection: close`` is added whenever the connection will close after it;
- a connection carries another request only when both messages ended and
  neither side asked to close (HTTP/1.0 never keeps a connection alive).
"""

from __future__ import annotations

import enum
from collections import deque

from ._chunked import LAST_CHUNK, ChunkedReader, ChunkError, frame_chunk
from ._headers import Headers
from ._wire import (
    FRAMING_FIELDS,
    RequestHead,
    WireError,
    checked_fields,
    declared_framing,
    has_blank_line,
    keep_alive,
    parse_request_head,
)

__all__ = ("RequestError", "ServerConnection", "Signal")


class Signal(enum.Enum):
    """What :meth:`ServerConnection.next_event` returns besides a head or body bytes."""

    NEED_DATA = "need data"  # feed more bytes (or the end: ``receive_data(b"")``)
    PAUSED = "paused"  # the next request has begun; answer this one first
    END = "end"  # the request body ended
    CLOSED = "closed"  # the client closed the connection between requests


class RequestError(WireError):
    """The client's request breaks HTTP/1.1; ``status`` is the answer (400 or 431)."""


class ServerConnection:
    """One client connection's HTTP/1.1 state: feed bytes, take events, frame a response.

    ``next_event()`` returns a :class:`RequestHead`, then the body's pieces as
    ``bytes``, then :attr:`Signal.END`; or a :class:`Signal` saying why there is
    nothing. Responses are written with :meth:`send_informational`,
    :meth:`send_response`, :meth:`send_data` and :meth:`send_end`, each returning
    the bytes to write. :meth:`start_next_cycle` readies the next request.
    """

    __slots__ = (
        "_body",
        "_buffer",
        "_closed",
        "_framing",
        "_left",
        "_more",
        "_pieces",
        "_searched",
        "keep_alive",
        "max_fields",
        "max_head_size",
        "request",
        "request_done",
        "response_done",
        "their_http_version",
        "waiting_for_100",
    )

    def __init__(self, max_head_size: int, max_fields: int | None = None) -> None:
        self.max_head_size = max_head_size
        #: The most header lines a request head (or trailer section) may have (then 431).
        self.max_fields = max_fields
        self._buffer = b""  # what arrived in one piece, not yet taken
        self._more: bytearray | None = None  # what arrived in several (then _buffer is empty)
        self._searched = 0  # how much of _more holds no blank line (a head arriving slowly)
        self._closed = False
        self._pieces: deque[bytes] = deque()
        #: The request head being served (None between requests).
        self.request: RequestHead | None = None
        #: The last request's HTTP version (None before the first).
        self.their_http_version: bytes | None = None
        #: True while the connection may carry another request after this one.
        self.keep_alive = True
        #: True while the client waits for ``100 Continue`` before sending its body.
        self.waiting_for_100 = False
        self.request_done = False
        self.response_done = False
        self._reset_body()

    def _reset_body(self) -> None:
        self._body: ChunkedReader | int = 0  # a chunked body's reader, or the bytes still due
        self._framing = ""  # our response body: "" (no head yet), "chunked", "length", "close"
        self._left = 0  # bytes still due of a response framed by its length

    # -- receiving ------------------------------------------------------------

    @property
    def has_data(self) -> bool:
        """True when bytes were received and not yet taken (a next request has begun)."""
        return bool(self._buffer or self._more)

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; ``b""`` when it closed its side.

        A piece that arrives while others wait is added to a growing buffer: a
        head sent a byte at a time costs time in proportion to its size, never to
        its square (nor does a pipelined request that waits meanwhile).
        """
        if not data:
            self._closed = True
        elif self._more is not None:
            self._more += data
        elif self._buffer:
            self._more = bytearray(self._buffer)
            self._more += data
            self._buffer = b""
        else:
            self._buffer = data

    def _joined(self) -> bytes:
        """Everything not yet taken, as one ``bytes``."""
        if self._more is not None:
            self._buffer, self._more, self._searched = bytes(self._more), None, 0
        return self._buffer

    def next_event(self) -> RequestHead | bytes | Signal:
        """The next thing the client sent; raises :class:`RequestError` when it breaks
        HTTP/1.1 (and keeps raising: the connection cannot be read on)."""
        if self.request is None:
            return self._next_head()
        if not self.request_done:
            return self._next_body()
        if self.has_data:
            return Signal.PAUSED
        return Signal.CLOSED if self._closed else Signal.NEED_DATA

    def _next_head(self) -> RequestHead | Signal:
        more = self._more
        if more is not None and more[0] >= 0x21:  # else the parser says what is wrong
            # A head arriving in pieces: look for its end only in what is new (and the
            # two bytes before, as a blank line is up to three bytes long).
            if not has_blank_line(more, max(0, self._searched - 2)):
                self._searched = len(more)
                return self._incomplete(len(more))
        buffer = self._joined()
        if not buffer:
            return Signal.CLOSED if self._closed else Signal.NEED_DATA
        try:
            parsed = parse_request_head(buffer, self.max_fields)
        except WireError as exc:
            raise RequestError(f"malformed request: {exc}", exc.status) from None
        if parsed is None:
            self._more, self._buffer, self._searched = bytearray(buffer), b"", len(buffer)
            return self._incomplete(len(buffer))
        head, size = parsed
        if size > self.max_head_size:  # arrived whole: measured on the wire all the same
            raise RequestError(
                f"request head of {size} bytes, over the limit of {self.max_head_size} "
                "(--max-header-size)",
                431,
            )
        self._buffer = buffer[size:]
        self.request = head
        self.their_http_version = head.http_version
        self.keep_alive = keep_alive(head.http_version, head.headers)
        expect = _comma_values(head.headers, b"expect")
        self.waiting_for_100 = head.http_version >= b"1.1" and b"100-continue" in expect
        chunked, length = declared_framing(head.headers)  # chunked wins (RFC 9112 6.3)
        if head.method == b"CONNECT":  # no content, whatever it declares (RFC 9110 9.3.6)
            self._body = 0
        elif chunked:
            self._body = ChunkedReader(self.max_head_size, self.max_fields)
        else:
            self._body = length or 0
        return head

    def _incomplete(self, size: int) -> Signal:
        if size > self.max_head_size:
            raise RequestError(
                f"request head over {self.max_head_size} bytes (--max-header-size)", 431
            )
        if self._closed:
            raise RequestError("the client closed the connection in the middle of a head")
        return Signal.NEED_DATA

    def _next_body(self) -> bytes | Signal:
        body = self._body
        if isinstance(body, int):
            if body == 0:
                return self._end_of_request()
            buffer = self._joined()
            if not buffer:
                if self._closed:
                    raise RequestError(
                        f"the client closed the connection {body} bytes short of its Content-Length"
                    )
                return Signal.NEED_DATA
            piece = buffer[:body]
            self._buffer = buffer[len(piece) :]
            self._body = body - len(piece)
            self.waiting_for_100 = False
            return piece
        pieces = self._pieces
        while not pieces:
            if body.done:
                self._buffer = body.leftover + self._joined()
                return self._end_of_request()
            if not self._joined():
                if self._closed:
                    raise RequestError("the client closed the connection before its body ended")
                return Signal.NEED_DATA
            data, self._buffer = self._buffer, b""
            try:
                pieces.extend(body.feed(data))
            except ChunkError as exc:
                raise RequestError(f"malformed chunked request body: {exc}", exc.status) from None
        self.waiting_for_100 = False
        return pieces.popleft()

    def _end_of_request(self) -> Signal:
        self.request_done = True
        self.waiting_for_100 = False
        return Signal.END

    # -- sending --------------------------------------------------------------

    @property
    def sending_body(self) -> bool:
        """True between the final response head and its end."""
        return bool(self._framing) and not self.response_done

    @property
    def chunked(self) -> bool:
        """True when the response body goes out in chunks (``send_data`` frames them)."""
        return self._framing == "chunked"

    def send_informational(self, status: int, headers: Headers, reason: bytes = b"") -> bytes:
        """A 1xx response head (before the final one)."""
        if self._framing or not 100 <= status < 200:
            raise WireError(f"a {status} informational response cannot be sent now")
        self.waiting_for_100 = False
        return _head(status, reason, checked_fields(headers))

    def send_response(self, status: int, headers: Headers, reason: bytes = b"") -> bytes:
        """The final response head, with the framing fields RFC 9112 asks for this client.

        A body of unknown length (no Content-Length) goes chunked to an HTTP/1.1
        client and is ended by closing to an HTTP/1.0 one; ``Connection: close``
        is added when the connection will close after this response.
        """
        if self._framing or self.response_done or status < 200:
            raise WireError(f"a {status} response cannot be sent now")
        fields = checked_fields(headers)
        method = self.request.method if self.request is not None else b""
        version = self.their_http_version
        bodiless = status in (204, 304) or (method == b"CONNECT" and status < 300)
        chunked, length = declared_framing(fields)
        self._framing, self._left = "length", length or 0
        if not bodiless and (chunked or length is None):
            # A body of unknown length: chunked for HTTP/1.1; else the close ends it
            # (HTTP/1.0, or no request read: assume the worst, as h11 does).
            fields = [f for f in fields if f[0].lower() not in FRAMING_FIELDS]
            if version is not None and version >= b"1.1":
                fields.append((b"Transfer-Encoding", b"chunked"))
                self._framing = "chunked"
            else:
                self._framing = "close"
                if method != b"HEAD":
                    self.keep_alive = False
        if not self.keep_alive:
            tokens = set(_comma_values(fields, b"connection"))
            tokens.discard(b"keep-alive")
            tokens.add(b"close")
            fields = [f for f in fields if f[0].lower() != b"connection"]
            fields += [(b"Connection", token) for token in sorted(tokens)]
        if b"close" in _comma_values(fields, b"connection"):
            self.keep_alive = False
        self.waiting_for_100 = False
        if method == b"HEAD" or bodiless:  # by the request's real method: no body
            self._framing, self._left = "length", 0
        return _head(status, reason, fields)

    def send_data(self, data: bytes) -> bytes:
        """Body bytes, framed for the client (an empty piece writes nothing)."""
        framing = self._framing
        if framing == "chunked":
            return frame_chunk(data) if data else b""
        if framing == "length":
            self._left -= len(data)
            if self._left < 0:
                raise WireError("response body longer than its Content-Length")
            return data
        if framing == "close" and not self.response_done:
            return data
        raise WireError("no response body is being sent")

    def send_end(self) -> bytes:
        """The end of the response body (the last chunk, when chunked)."""
        if not self.sending_body:
            raise WireError("no response body is being sent")
        if self._framing == "length" and self._left:
            raise WireError(f"response body {self._left} bytes short of its Content-Length")
        self.response_done = True
        if self._framing == "close":
            self.keep_alive = False
        return LAST_CHUNK if self._framing == "chunked" else b""

    @property
    def reusable(self) -> bool:
        """True when both messages ended and the connection may carry another request."""
        return self.request_done and self.response_done and self.keep_alive

    def start_next_cycle(self) -> None:
        """Ready the connection for the next request (bytes already buffered are kept)."""
        if not self.reusable:
            raise WireError("this connection cannot carry another request")
        self.request = None
        self.request_done = self.response_done = False
        self.waiting_for_100 = False
        self._reset_body()


def _comma_values(headers: Headers, name: bytes) -> list[bytes]:
    """Every lower-cased, comma-separated value of the field ``name``, as h11 reads them."""
    out = []
    for key, value in headers:
        if key.lower() == name:
            out += [part.strip() for part in value.lower().split(b",") if part.strip()]
    return out


def _head(status: int, reason: bytes, headers: Headers) -> bytes:
    """A response head's bytes, Host first if there is one (as h11 writes them)."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    lines += [b"%s: %s\r\n" % field for field in headers if field[0].lower() == b"host"]
    lines += [b"%s: %s\r\n" % field for field in headers if field[0].lower() != b"host"]
    lines.append(b"\r\n")
    return b"".join(lines)
