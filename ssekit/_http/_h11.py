"""The h11 engine (``--http h11``): both sides of HTTP/1.1 on h11, behind ssekit's interface.

h11 is the reference ssekit's own HTTP/1.1 is held to; this runs it in its
place, on the same interface, so a deployment can choose it and a test can
run every exchange both ways:

- :class:`H11ServerConnection` serves a client on ``h11.Connection(h11.SERVER)``
  with :class:`~ssekit._http._server.ServerConnection`'s surface and meaning;
- :class:`H11Origin` is the sans-IO half of an
  :class:`~ssekit._http._connection.OriginConnection` speaking
  ``h11.Connection(h11.CLIENT)``: the request's head and framing out, response
  heads, body pieces, its end and the reuse verdict in.

Two things sit above h11 on both sides, as on ssekit's engine. Each head is
gathered here until its blank line has come (bounded by ``max_head_size``) and
only then given to h11, so a head is refused by size however it is cut, and a
request head passes :meth:`H11ServerConnection._screen_head` (and a body's
trailer fields :meth:`~H11ServerConnection._screen_trailers`) first: one place
each where checks stricter than h11's apply to both engines. And a chunk that
arrives over several reads is handed on whole (up to ``MAX_CHUNK_HOLD``, as
:class:`~ssekit._http._chunked.ChunkedReader` does), where h11 hands on its
pieces: one upstream chunk stays one downstream chunk.

Every h11 exception becomes a ssekit one here: :class:`RequestError` for what a
client sent, :class:`WireError` for what an origin sent or what would be sent.
"""

from __future__ import annotations

import re
from typing import Final

import h11

from ._chunked import MAX_CHUNK_HOLD
from ._headers import Headers
from ._server import RequestError, Signal
from ._wire import (
    RequestHead,
    ResponseHead,
    WireError,
    check_request,
    check_trailer_name,
    has_blank_line,
    screen_request_head,
)

__all__ = ("H11Origin", "H11ServerConnection")

# The blank line ending a head, as ``_wire.has_blank_line`` and h11 find it.
_BLANK_LINE: Final = re.compile(rb"\n\r?\n")


def _head_end(data: bytes | bytearray) -> int | None:
    """Where the head at the start of ``data`` ends (after its blank line); None if not yet."""
    match = _BLANK_LINE.search(data)
    return None if match is None else match.end()


def _tokens(headers: Headers, name: bytes) -> list[bytes]:
    """Every lower-cased, comma-separated value of the field ``name`` (h11's get_comma_header)."""
    out = []
    for key, value in headers:
        if key.lower() == name:
            out += [part.strip() for part in value.lower().split(b",") if part.strip()]
    return out


def _keeps_alive(http_version: bytes | None, headers: Headers) -> bool:
    """h11's rule for a message: no keep-alive for HTTP/1.0, nor after ``Connection: close``."""
    return (http_version or b"1.1") >= b"1.1" and b"close" not in _tokens(headers, b"connection")


def _bodiless(method: bytes | None, status: int) -> bool:
    """A response with no body whatever its fields say (RFC 9112 6.3; h11's _body_framing)."""
    return (
        status in (204, 304) or method == b"HEAD" or (method == b"CONNECT" and 200 <= status < 300)
    )


class _Rejoin:
    """Puts h11's pieces of a chunk back together: each chunk of a ``chunked`` body comes
    out whole, or in pieces of at least ``MAX_CHUNK_HOLD`` bytes; other bodies as they come.

    h11 marks a chunk's last piece (``chunk_end``) always, but its first
    (``chunk_start``) only when the chunk's data came with its size line: whether
    the body is chunked is the head's to say.
    """

    __slots__ = ("_chunked", "_held", "_size")

    def __init__(self, chunked: bool = False) -> None:
        self._held: list[bytes] = []
        self._size = 0
        self._chunked = chunked

    def take(self, event: h11.Data) -> bytes:
        """The piece ``event`` completes (b"" while a chunk is still arriving)."""
        data = bytes(event.data)
        if not self._chunked:
            return data
        if event.chunk_end and not self._held:
            return data  # the common case: a whole chunk in one read
        self._held.append(data)
        self._size += len(data)
        if event.chunk_end or self._size >= MAX_CHUNK_HOLD:
            data = b"".join(self._held)
            self._held.clear()
            self._size = 0
            return data
        return b""


class H11ServerConnection:
    """One client connection's HTTP/1.1 state on h11: the surface of
    :class:`~ssekit._http._server.ServerConnection`, with the same meaning.

    One ``h11.Connection(h11.SERVER)`` serves every request of the connection
    (so the client's HTTP version outlives a cycle, as in h11). Bytes of a next
    request head are kept here until its blank line has come, then screened
    and given to h11 with whatever followed them; from then until the body's
    end h11 takes every byte. A head still incomplete past ``max_head_size``
    is a 431, as h11 would answer.
    """

    __slots__ = (
        "_chunked",
        "_closed",
        "_conn",
        "_error",
        "_head",
        "_in_h11",
        "_keep",
        "_pieces",
        "_searched",
        "max_fields",
        "max_head_size",
        "request",
        "request_done",
        "response_done",
    )

    def __init__(self, max_head_size: int, max_fields: int | None = None) -> None:
        self.max_head_size = max_head_size
        #: The most header lines a request head (or trailer section) may have (then 431).
        self.max_fields = max_fields
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head_size)
        self._head = bytearray()  # the next request head so far, not yet given to h11...
        self._in_h11 = 0  # ...but for its first _in_h11 bytes, which h11 read past a body
        self._searched = 0  # how much of _head holds no blank line
        self._closed = False
        self._error: RequestError | None = None
        self._keep = True
        self._chunked = False
        self._pieces = _Rejoin()
        #: The request head being served (None between requests).
        self.request: RequestHead | None = None
        self.request_done = False
        self.response_done = False

    # -- state ----------------------------------------------------------------

    @property
    def their_http_version(self) -> bytes | None:
        """The last request's HTTP version (None before the first)."""
        return self._conn.their_http_version

    @property
    def waiting_for_100(self) -> bool:
        """True while the client waits for ``100 Continue`` before sending its body."""
        return self._conn.they_are_waiting_for_100_continue

    @property
    def keep_alive(self) -> bool:
        """True while the connection may carry another request after this one (once the
        response ended, h11's verdict)."""
        if self.response_done:
            return self._conn.our_state is h11.DONE
        return self._keep

    @property
    def has_data(self) -> bool:
        """True when bytes were received and not yet taken (a next request has begun)."""
        if self._head:
            return True
        return self.request is not None and bool(self._conn.trailing_data[0])

    @property
    def sending_body(self) -> bool:
        """True between the final response head and its end."""
        return self._conn.our_state is h11.SEND_BODY

    @property
    def chunked(self) -> bool:
        """True when the response body goes out in chunks (``send_data`` frames them)."""
        return self._chunked

    @property
    def reusable(self) -> bool:
        """True when both messages ended and the connection may carry another request."""
        return (
            self.request_done
            and self.response_done
            and self._conn.our_state is h11.DONE
            and self._conn.their_state is h11.DONE
        )

    # -- receiving ------------------------------------------------------------

    @property
    def _reading_body(self) -> bool:
        return self.request is not None and not self.request_done

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; ``b""`` when it closed its side."""
        if not data:
            self._closed = True
            if self._reading_body:
                self._conn.receive_data(b"")
        elif self._closed:
            return  # nothing comes after the end of a stream; h11 would take it for a bug
        elif self._reading_body:
            self._conn.receive_data(data)
        else:
            self._head += data

    def next_event(self) -> RequestHead | bytes | Signal:
        """The next thing the client sent; raises :class:`RequestError` when it breaks
        HTTP/1.1 (and keeps raising: the connection cannot be read on)."""
        if self._error is not None:
            raise self._error
        try:
            if self.request is None:
                return self._next_head()
            if not self.request_done:
                return self._next_body()
        except h11.RemoteProtocolError as exc:
            status = 431 if exc.error_status_hint == 431 else 400
            self._error = RequestError(f"malformed request: {exc}", status)
            raise self._error from exc
        except RequestError as exc:
            self._error = exc
            raise
        if self.has_data:
            return Signal.PAUSED
        return Signal.CLOSED if self._closed else Signal.NEED_DATA

    def _next_head(self) -> RequestHead | Signal:
        head = self._head
        if not head:
            return Signal.CLOSED if self._closed else Signal.NEED_DATA
        # A first byte that cannot begin a request line (a blank line, a TLS handshake
        # sent to a plain port) goes to h11 at once, which refuses it as it is.
        if head[0] >= 0x21:
            # Look for the blank line only in what is new (and the two bytes before,
            # as a blank line is up to three bytes long): a slow head costs its size.
            if not has_blank_line(head, max(0, self._searched - 2)):
                self._searched = len(head)
                if len(head) > self.max_head_size:
                    raise RequestError(
                        f"request head over {self.max_head_size} bytes (--max-header-size)", 431
                    )
                if self._closed:
                    raise RequestError("the client closed the connection in the middle of a head")
                return Signal.NEED_DATA
            end = _head_end(head)
            assert end is not None
            if end > self.max_head_size:  # arrived whole: measured on the wire all the same
                raise RequestError(
                    f"request head of {end} bytes, over the limit of {self.max_head_size} "
                    "(--max-header-size)",
                    431,
                )
            self._screen_head(bytes(head[:end]))
        rest = bytes(head[self._in_h11 :])
        self._head, self._in_h11, self._searched = bytearray(), 0, 0
        if rest:
            self._conn.receive_data(rest)
        if self._closed:
            self._conn.receive_data(b"")
        event = self._conn.next_event()
        if not isinstance(event, h11.Request):  # h11 refuses what is not a head first
            raise RequestError(f"malformed request: {event!r} where a request head was due")
        headers = list(event.headers)
        request = RequestHead(event.method, event.target, event.http_version, headers)
        try:
            check_request(request)
        except WireError as exc:
            raise self._refuse(exc) from None
        self.request = request
        self._keep = _keeps_alive(event.http_version, headers)
        self._pieces = _Rejoin(bool(_tokens(headers, b"transfer-encoding")))
        return self.request

    def _screen_head(self, raw: bytes) -> None:
        """The raw bytes of a request head, through its blank line, before h11 reads them:
        the checks stricter than h11's that ssekit's engine makes too (no obsolete line
        folding, at most ``max_fields`` lines: ``_wire.check_request_lines``)."""
        try:
            screen_request_head(raw, self.max_fields)
        except WireError as exc:
            raise self._refuse(exc) from None

    @staticmethod
    def _refuse(error: WireError) -> RequestError:
        """The refusal of ``error``, with its status (``next_event`` keeps raising it)."""
        return RequestError(f"malformed request: {error}", error.status)

    def _next_body(self) -> bytes | Signal:
        conn = self._conn
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Data):
                piece = self._pieces.take(event)
                if piece:
                    return piece
            elif isinstance(event, h11.EndOfMessage):
                self._screen_trailers(list(event.headers))
                self.request_done = True
                return Signal.END
            elif event is h11.NEED_DATA:
                return Signal.NEED_DATA
            else:  # h11 pauses only after a request's end, and reports a close only before one
                raise RequestError(f"malformed request: {event!r} inside a request body")

    def _screen_trailers(self, headers: Headers) -> None:
        """The trailer fields ending a request body, as h11 parsed them (none but after a
        chunked body), checked as ssekit's engine checks them: no framing field, at most
        ``max_fields`` (then 431). (h11 has unfolded any folded line already.)"""
        if self.max_fields is not None and len(headers) > self.max_fields:
            raise self._refuse(
                WireError(
                    f"trailer section over {self.max_fields} fields (--max-header-count)", 431
                )
            )
        # h11 bounds a trailer section only while it is incomplete: one that came in one
        # read is measured here, as its fields were parsed (OWS and endings as CRLF).
        size = sum(len(name) + len(value) + 4 for name, value in headers) + 2
        if size > self.max_head_size:
            raise self._refuse(
                WireError(
                    f"trailer section over {self.max_head_size} bytes (--max-header-size)", 431
                )
            )
        try:
            for name, _ in headers:
                check_trailer_name(name)
        except WireError as exc:
            raise self._refuse(exc) from None

    # -- sending --------------------------------------------------------------

    def send_informational(self, status: int, headers: Headers, reason: bytes = b"") -> bytes:
        """A 1xx response head (before the final one)."""
        try:
            return self._conn.send(
                h11.InformationalResponse(status_code=status, headers=headers, reason=reason)
            )
        except h11.LocalProtocolError as exc:
            raise WireError(f"a {status} informational response cannot be sent: {exc}") from exc

    def send_response(self, status: int, headers: Headers, reason: bytes = b"") -> bytes:
        """The final response head, framed by h11 for this client: a body of unknown length
        goes chunked to an HTTP/1.1 client and is ended by closing to an HTTP/1.0 one;
        ``Connection: close`` is added when the connection will close after it."""
        try:
            head = self._conn.send(h11.Response(status_code=status, headers=headers, reason=reason))
        except h11.LocalProtocolError as exc:
            raise WireError(f"a {status} response cannot be sent: {exc}") from exc
        # What h11 decided (in private code) and wrote: whether the body goes chunked,
        # and whether the connection closes after it.
        method = self.request.method if self.request is not None else None
        version = self._conn.their_http_version
        unknown = not _bodiless(b"GET" if method == b"HEAD" else method, status) and (
            bool(_tokens(headers, b"transfer-encoding")) or not _tokens(headers, b"content-length")
        )
        old_client = version is None or version < b"1.1"
        self._chunked = unknown and not old_client and method != b"HEAD"
        if unknown and old_client and method != b"HEAD":
            self._keep = False
        if b"close" in _tokens(headers, b"connection"):
            self._keep = False
        return head

    def send_data(self, data: bytes) -> bytes:
        """Body bytes, framed for the client (an empty piece writes nothing)."""
        try:
            return self._conn.send(h11.Data(data=data))
        except h11.LocalProtocolError as exc:
            raise WireError(f"no body bytes can be sent now: {exc}") from exc

    def send_end(self) -> bytes:
        """The end of the response body (the last chunk, when chunked)."""
        try:
            data = self._conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise WireError(f"the response cannot end now: {exc}") from exc
        self.response_done = True
        return data

    def start_next_cycle(self) -> None:
        """Ready the connection for the next request (bytes already received are kept: those
        h11 read past the last body begin the next head)."""
        if not self.reusable:
            raise WireError("this connection cannot carry another request")
        self._conn.start_next_cycle()
        leftover = self._conn.trailing_data[0]
        self._head[:0] = leftover
        self._in_h11 = len(leftover)
        self._searched = 0
        self.request = None
        self.request_done = self.response_done = False
        self._chunked = False
        self._pieces = _Rejoin()


class H11Origin:
    """The sans-IO h11 state of one origin connection (``h11.Connection(h11.CLIENT)``).

    :class:`~ssekit._http._connection.OriginConnection` does the I/O and asks
    this for bytes and events: :meth:`request`, :meth:`data`, :meth:`end` frame
    the request; :meth:`parse_head` reads a response head once its blank line
    has come (``_wire.parse_response_head``'s contract); :meth:`feed` reads the
    body, as :class:`~ssekit._http._chunked.ChunkedReader` does (``done``,
    ``leftover``); :meth:`next_cycle` gives h11's verdict on reuse.
    Raises :class:`WireError` for every h11 error; h11 then stays failed.
    """

    __slots__ = ("_conn", "_method", "_pieces", "done", "keep", "leftover", "read_to_close")

    def __init__(self, max_head_size: int) -> None:
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_head_size)
        self._method = b"GET"
        self._pieces = _Rejoin()
        #: The request allows another exchange as far as ssekit's engine would check it
        #: (always: h11 keeps that verdict itself, and :meth:`next_cycle` reports it).
        self.keep = True
        #: The response body ended (after :meth:`feed`).
        self.done = False
        #: Bytes that came after the response body.
        self.leftover = b""
        #: The final response's body has no length: it ends when the origin closes.
        self.read_to_close = False

    def _send(self, event: h11.Request | h11.Data | h11.EndOfMessage) -> bytes:
        try:
            return self._conn.send(event)
        except h11.LocalProtocolError as exc:
            raise WireError(str(exc)) from exc

    def request(self, method: str, target: str, headers: Headers) -> bytes:
        """The request head's bytes; the body follows through :meth:`data` and :meth:`end`."""
        self._method = method.encode("ascii", "replace")
        self._pieces = _Rejoin()
        self.done = self.read_to_close = False
        self.leftover = b""
        try:
            event = h11.Request(method=method, target=target, headers=headers)
        except (h11.LocalProtocolError, UnicodeEncodeError) as exc:
            raise WireError(f"{exc} ({method} {target})") from exc
        return self._send(event)

    def data(self, piece: bytes) -> bytes:
        """Request body bytes, framed as the request's fields say."""
        return self._send(h11.Data(data=piece)) if piece else b""

    def end(self) -> bytes:
        """The end of the request body (raises when it is short of its Content-Length)."""
        return self._send(h11.EndOfMessage())

    def parse_head(self, data: bytes) -> tuple[ResponseHead, int] | None:
        """The response head at the start of ``data`` and its length on the wire; None while
        its blank line has not arrived. Raises :class:`WireError` when h11 refuses it.

        Only the head goes to h11: the bytes after it are the caller's to :meth:`feed`.
        """
        end = _head_end(data)
        if end is None:
            return None
        self._conn.receive_data(data[:end])
        try:
            event = self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            line = data[: data.find(b"\n")].rstrip(b"\r")
            raise WireError(f"{exc} (in a head beginning {line[:200]!r})") from exc
        if not isinstance(event, h11.InformationalResponse | h11.Response):
            raise WireError(f"{event!r} where a response head was due")
        fields = list(event.headers)
        head = ResponseHead(event.status_code, event.reason, event.http_version, fields)
        if isinstance(event, h11.Response):
            chunked = bool(_tokens(fields, b"transfer-encoding"))
            self._pieces = _Rejoin(chunked)
            framed = chunked or bool(_tokens(fields, b"content-length"))
            self.read_to_close = not framed and not _bodiless(self._method, event.status_code)
        return head, end

    def feed(self, data: bytes) -> list[bytes]:
        """Body bytes in (b"": none new), the body's pieces they completed out, in order;
        ``done`` turns True at the body's end, and what came after is ``leftover``."""
        conn = self._conn
        if data:
            conn.receive_data(data)
        out = []
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise WireError(str(exc)) from exc
            if isinstance(event, h11.Data):
                piece = self._pieces.take(event)
                if piece:
                    out.append(piece)
            elif isinstance(event, h11.EndOfMessage):
                for name, _ in event.headers:
                    check_trailer_name(name)  # as ssekit's engine reads trailers
                self.done = True
                self.leftover = conn.trailing_data[0]
                return out
            elif event is h11.NEED_DATA:
                return out
            else:
                raise WireError(f"{event!r} inside a response body")

    def next_cycle(self) -> bool:
        """True when both messages ended and h11 keeps the connection (neither said close,
        nor spoke HTTP/1.0); it is then ready for the next request."""
        if self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE:
            self._conn.start_next_cycle()
            return True
        return False
