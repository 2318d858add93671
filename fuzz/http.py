"""Differential fuzzing of ssekit's HTTP/1.1 framing against h11 and llhttp (httptools).

    python fuzz/http.py --replay                  # replay fuzz/http_corpus/, every cut
    python fuzz/http.py --replay --seconds 5      # then a seeded mutation loop (CI)
    python fuzz/http.py --seconds 3600 --target response   # an hour, responses only
    python fuzz/http.py --atheris                 # coverage-guided, when atheris is installed

The invariant: for any bytes, ssekit reads the same messages with the same verdict
whatever the cuts (split invariance); and it never reads a byte stream differently
from an oracle that accepts it, nor accepts what both oracles refuse. Refusing what
an oracle accepts is allowed, tallied by category (STRICTER). Each side's reading is
normalised to a list of messages (start line, headers, body, trailers, whether the
connection carries on) and a verdict (accepted, refused at message k, incomplete).

One line per finding, its minimised input saved under fuzz/http-findings/ (ignored
by git); the exit status is 1 when a finding occurred that is not a known bug
(KNOWN_BUGS: corpus files, and what mutants of them find, reported but not failing).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import hashlib
import itertools
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import h11
import httptools

from ssekit._errors import UpstreamError
from ssekit._http._connection import OriginConnection
from ssekit._http._headers import head_size
from ssekit._http._origin import Origin
from ssekit._http._server import RequestError, ServerConnection, Signal
from ssekit._http._stream import FastStream
from ssekit._http._wire import RequestHead

ROOT = Path(__file__).resolve().parent
# Run as a script, this folder leads sys.path, and this file is named like the standard
# library's http package: take the folder off, so a later `import http` finds the real one.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != ROOT]
CORPUS = ROOT / "http_corpus"
FINDINGS = ROOT / "http-findings"
TARGETS: Final = ("request", "response")
#: The proxy's default --max-header-size: heads (requests and responses) past it are refused.
MAX_HEAD: Final = 64 * 1024
#: The oracles' bounds sit far above ssekit's, so a head ssekit refuses for size is "stricter".
ORACLE_MAX_HEAD: Final = 1 << 20
MAX_INPUT: Final = 72 * 1024  # past MAX_HEAD, so the head bounds are reached
#: Inputs up to this size are replayed at every single cut (and byte by byte).
EXHAUSTIVE: Final = 2048
#: atheris's inputs (and seeds) stay under this: instrumented code runs many times slower.
ATHERIS_MAX_LEN: Final = 8192

# -- Known bugs ----------------------------------------------------------------------
#
# Corpus files whose findings are ssekit bugs not fixed yet: replay reports them as
# KNOWN and does not fail, and a mutant's finding with the same signature (kind,
# target, oracle, what differs, each side's verdict) is known too. DELETE AN ENTRY
# ONCE ITS BUG IS FIXED: replay then holds the fix (a file listed here that finds
# nothing any more is reported, so a stale entry is noticed).
KNOWN_BUGS: Final[frozenset[str]] = frozenset()


# -- Deliberate differences -------------------------------------------------------------
#
# ssekit refusing what an oracle accepts is allowed; each refusal is tallied under the
# first category whose pattern matches ssekit's error (else "other", printed for review).
# fuzz/README.md shows this table; the harness reads it from here.


@dataclass(frozen=True, slots=True)
class Category:
    pattern: str  # a regular expression searched in ssekit's refusal message
    why: str


STRICTER: Final[dict[str, Category]] = {
    "head-too-large": Category(
        r"over \d+ bytes|over the (proxy's )?limit|request head of about",
        "heads are bounded by --max-header-size (64 KiB); the oracles run with 1 MiB (h11) "
        "and no bound (llhttp)",
    ),
    "chunk-size-line": Category(
        r"bad chunk size line|chunk size line not ended by CRLF|chunk size line over",
        "a chunk size of at most 16 hex digits (a 64-bit size; h11 takes 20, llhttp any "
        "number of leading zeros), and no bare CR in an extension (RFC 9112 7.1.1: "
        "chunk-ext is tokens and quoted strings; h11 reads `;.*`)",
    ),
    "blank-line-before-head": Category(
        r"must begin with a method|the head began with a blank line",
        "an empty line before a request line is refused, as h11 does (RFC 9112 2.2 says a "
        "server SHOULD ignore one; llhttp skips any number), and before a status line",
    ),
    "host": Category(
        r"Host header field",
        "an HTTP/1.1 request without a Host field, or with two, gets a 400 (RFC 9112 3.2: "
        "MUST), as in h11; llhttp leaves it to the application",
    ),
    "transfer-coding": Category(
        r"transfer coding .* is not supported|more than one Transfer-Encoding",
        "no transfer coding but chunked, once (h11: 501; RFC 9112 6.1 lets a server refuse "
        "a coding it does not implement), where llhttp reads `gzip, chunked` or reads an "
        "unknown coding to the close",
    ),
    "request-line": Category(
        r"illegal request line",
        "a request line is method SP target SP HTTP/x.y, as h11 reads it (RFC 9112 3); "
        "llhttp also takes an HTTP/0.9 line (`GET /`, no version)",
    ),
    "status-line": Category(
        r"illegal status line|is not a status code",
        "a reason phrase is HTAB, SP, VCHAR and obs-text only (RFC 9112 4), a status three "
        "digits from 100, as h11 reads them; llhttp takes control bytes such as VT",
    ),
    "content-length-digits": Category(
        r"bad Content-Length",
        "at most 20 digits, as h11 (ssekit and h11 refuse more); llhttp takes any number "
        "of leading zeros",
    ),
    "101-not-asked": Category(
        r"Switching Protocols, which the request did not ask for",
        "a 101 answering a request that proposed no upgrade is a 502 (RFC 9110 15.2.2: a "
        "server switches only to a protocol the client asked for)",
    ),
    "host-syntax": Category(
        r"is not host\[:port\]",
        "a Host that is not uri-host[:port] (userinfo, spaces, a path) is a 400: RFC 9112 "
        "3.2 says MUST; h11 and llhttp take any field value (issue 18, row f)",
    ),
    "obs-fold": Category(
        r"obsolete line folding",
        "a folded line in a request head or a trailer section is a 400 (RFC 9112 5.2 lets a "
        "server refuse it); h11 unfolds it (issue 18, row c)",
    ),
    "trailer-field": Category(
        r"field in a trailer section|trailer section over",
        "a framing field (Content-Length, Transfer-Encoding) in a trailer section, or a "
        "section past the head bounds, refuses the message (RFC 9110 6.5.1); h11 takes them",
    ),
    # Not refusals: ssekit stops reading where the oracle reads on.
    "length-beside-coding": Category(
        r"(?!)",
        "a message with both Content-Length and Transfer-Encoding is read chunked, then its "
        "connection closed (RFC 9112 6.3: ought to be handled as an error; h11 keeps it)",
    ),
    "http/1.0-keep-alive": Category(
        r"(?!)",
        "an HTTP/1.0 connection is never kept (as h11), Connection: keep-alive or not: "
        "RFC 9112 9.3 and Appendix C.2.2 make 1.0 persistence optional; llhttp keeps it",
    ),
    "line-break-between-messages": Category(
        r"(?!)",
        "a CR or LF after a message is the start of the next one, to be completed or "
        "refused; llhttp skips it",
    ),
}
# -- The normalised reading ------------------------------------------------------------

ACCEPTED: Final = "accepted"  # every byte read as whole messages (or past a closing one)
REFUSED: Final = "refused"  # an error while reading message len(messages)
INCOMPLETE: Final = "incomplete"  # the input ended inside message len(messages)
CRASHED: Final = "crashed"  # ssekit raised something not its own HTTP error

Fields = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class Message:
    start: tuple[object, ...]  # (method, target, version) or (status, version)
    headers: Fields  # names lower-cased, values normalised (see canonical)
    body: bytes
    trailers: Fields | None  # None: that side does not report them (ssekit drops them)
    keep: bool  # the connection carries another message after this one

    def show(self) -> str:
        parts = [" ".join(str(p) for p in self.start)]
        parts += [f"{n.decode('latin-1')}: {v.decode('latin-1')}" for n, v in self.headers]
        text = "[" + "; ".join(parts) + f"] body={self.body[:80]!r}"
        if len(self.body) > 80:
            text += f"...({len(self.body)} bytes)"
        if self.trailers:
            text += f" trailers={list(self.trailers)!r}"
        return text + ("" if self.keep else " close")


@dataclass(frozen=True, slots=True)
class Reading:
    messages: tuple[Message, ...]
    verdict: str
    error: str = field(default="", compare=False)  # why it refused (not compared)

    def show(self) -> str:
        what = self.verdict
        if self.verdict in (REFUSED, INCOMPLETE, CRASHED):
            what += f" at message {len(self.messages)}"
        if self.error:
            what += f" ({self.error[:120]})"
        return f"{len(self.messages)} message(s) {[m.show() for m in self.messages]} {what}"


_OWS = b" \t"
_FOLD = re.compile(rb"[ \t]*\r?\n[ \t]+")


def canonical(headers: Iterable[tuple[bytes, bytes]]) -> Fields:
    """Header fields as every side can be compared: names lower-cased, OWS trimmed, an
    obsolete fold read as one space, Transfer-Encoding lower-cased, and repeats of one
    Content-Length value (``5, 5`` or two fields) as one field, as h11 and ssekit keep them."""
    out: list[tuple[bytes, bytes]] = []
    length: bytes | None = None
    for raw_name, raw_value in headers:
        name = bytes(raw_name).lower()
        value = bytes(raw_value)
        if b"\n" in value:
            value = _FOLD.sub(b" ", value)
        value = value.strip(_OWS)
        if name == b"transfer-encoding":
            value = value.lower()
        elif name == b"content-length":
            values = {part.strip(_OWS) for part in value.split(b",")}
            if len(values) == 1:
                value = values.pop()
                if value == length:
                    continue
                length = value if length is None else length
        out.append((name, value))
    return tuple(out)


def is_switch(message: Message) -> bool:
    """A CONNECT, an Upgrade proposal or a 101: what follows may not be HTTP any more."""
    start = message.start
    if start[0] == 101 or start[0] == b"CONNECT":
        return True
    return isinstance(start[0], bytes) and any(name == b"upgrade" for name, _ in message.headers)


# -- ssekit, requests: ServerConnection, as the proxy's Downstream drives it ----------------


def ssekit_requests(pieces: list[bytes]) -> Reading:
    """What ServerConnection reads from ``pieces`` (each one read), each request answered
    with an empty 404. The head-size check of ``proxy._relay.admit`` is applied too: the
    connection bounds a head still arriving, ``admit`` one that arrived whole."""
    conn = ServerConnection(MAX_HEAD)
    messages: list[Message] = []
    head: RequestHead | None = None
    body: list[bytes] = []
    try:
        for piece in pieces:
            conn.receive_data(piece)
            while True:
                event = conn.next_event()
                if event is Signal.NEED_DATA:
                    break
                if isinstance(event, RequestHead):
                    head, body = event, []
                    start = b"%s %s HTTP/1.1" % (event.method, event.target)
                    if head_size(start, event.headers) > MAX_HEAD:
                        raise RequestError("request head of about N bytes (admit)", 431)
                elif isinstance(event, bytes):
                    body.append(event)
                elif event is Signal.END and head is not None:
                    conn.send_response(404, [(b"content-length", b"0")])
                    conn.send_end()
                    keep = conn.reusable
                    messages.append(
                        Message(
                            (head.method, head.target, head.http_version),
                            canonical(head.headers),
                            b"".join(body),
                            None,
                            keep,
                        )
                    )
                    if not keep:
                        return Reading(tuple(messages), ACCEPTED)
                    conn.start_next_cycle()
                    head = None
                else:
                    raise AssertionError(f"unexpected {event!r} while reading")
    except RequestError as exc:
        return Reading(tuple(messages), REFUSED, f"{exc.status} {exc}")
    except Exception as exc:  # anything else is a crash
        return Reading(tuple(messages), CRASHED, repr(exc))
    done = head is None and not conn.has_data
    return Reading(tuple(messages), ACCEPTED if done else INCOMPLETE)


# -- ssekit, responses: OriginConnection over an in-memory stream ------------------------


class _Transport:
    """Where the in-memory stream's writes (the requests) go: nowhere."""

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def abort(self) -> None:
        pass


class _MemoryStream(FastStream):
    """The origin's bytes queued as separate reads; EOF once a read finds nothing queued
    (``starved`` then says the connection wanted more than the input held)."""

    def __init__(self, pieces: list[bytes]) -> None:
        super().__init__()
        self.connection_made(_Transport())  # type: ignore[arg-type]
        for piece in pieces:
            self.data_received(piece)
        self.starved = False

    async def receive_within(self, max_bytes: int, idle_limit: float | None) -> bytes:
        if not self._queue and not self._eof:
            self.starved = True
            self.eof_received()
        return await super().receive_within(max_bytes, idle_limit)

    def unread(self) -> list[bytes]:
        return list(self._queue)


class _Origin(OriginConnection):
    """OriginConnection keeping the bytes that came after the response body (it drops
    them: a connection with such bytes is not reused), so the next response is read
    from them on a fresh connection, as if they came after the reuse."""

    leftover = b""

    def _body_end(self, leftover: bytes) -> None:
        self.leftover = leftover
        super()._body_end(leftover)


_ORIGIN: Final = Origin.from_url("http://origin.example")
_LOOP: asyncio.AbstractEventLoop | None = None


async def _origin_reading(pieces: list[bytes]) -> Reading:
    messages: list[Message] = []
    pending = [piece for piece in pieces if piece]
    while pending:
        stream = _MemoryStream(pending)
        conn = _Origin(stream, _ORIGIN, max_head_size=MAX_HEAD)
        infos: list[Message] = []

        async def informational(head: Any, infos: list[Message] = infos) -> None:
            start = (head.status_code, head.http_version)
            infos.append(Message(start, canonical(head.headers), b"", None, True))

        try:
            await conn.send_request("GET", "/", [(b"host", b"origin.example")])
            head = await conn.receive_response(first_byte_timeout=3600, informational=informational)
            body = [
                chunk
                async for batch in conn.receive_body_batches(idle_timeout=3600)
                for chunk in batch
            ]
        except UpstreamError as exc:
            messages += infos
            verdict = INCOMPLETE if stream.starved else REFUSED
            return Reading(tuple(messages), verdict, str(exc))
        except Exception as exc:
            return Reading(tuple(messages + infos), CRASHED, repr(exc))
        keep = conn._keep and not conn.read_to_close
        start = (head.status_code, head.http_version)
        messages += infos
        messages.append(Message(start, canonical(head.headers), b"".join(body), None, keep))
        if not keep:
            break
        pending = [piece for piece in [conn.leftover, *stream.unread()] if piece]
    return Reading(tuple(messages), ACCEPTED)


def ssekit_responses_all(cut_pieces: list[list[bytes]]) -> list[Reading]:
    """What OriginConnection reads, exchange after exchange (each a GET), for each way
    of cutting the input; one event-loop run for all (no read ever waits)."""
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
        atexit.register(_LOOP.close)

    async def all_cuts() -> list[Reading]:
        return [await _origin_reading(pieces) for pieces in cut_pieces]

    return _LOOP.run_until_complete(all_cuts())


# -- h11 -----------------------------------------------------------------------------------


def _h11_message(event: Any, body: list[bytes], trailers: Any, keep: bool) -> Message:
    if isinstance(event, h11.Request):
        start: tuple[object, ...] = (bytes(event.method), bytes(event.target), event.http_version)
    else:
        start = (event.status_code, event.http_version)
    return Message(
        start, canonical(event.headers.raw_items()), b"".join(body), canonical(trailers), keep
    )


def h11_requests(data: bytes) -> Reading:
    """What h11, serving, reads from ``data``; each request answered with an empty 404."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=ORACLE_MAX_HEAD)
    messages: list[Message] = []
    head: Any = None
    body: list[bytes] = []
    try:
        if data:  # b"" would say the client closed
            conn.receive_data(data)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, h11.Request):
                head, body = event, []
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                conn.send(h11.Response(status_code=404, headers=[(b"content-length", b"0")]))
                conn.send(h11.EndOfMessage())
                keep = conn.our_state is h11.DONE and conn.their_state is h11.DONE
                messages.append(_h11_message(head, body, event.headers.raw_items(), keep))
                if not keep:
                    return Reading(tuple(messages), ACCEPTED)
                conn.start_next_cycle()
                head = None
    except h11.ProtocolError as exc:  # h11 raises LocalProtocolError for some peer errors
        return Reading(tuple(messages), REFUSED, f"{type(exc).__name__}: {exc}")
    done = head is None and not conn.trailing_data[0]
    return Reading(tuple(messages), ACCEPTED if done else INCOMPLETE)


def h11_responses(data: bytes) -> Reading:
    """What h11, as a client that sent a GET, reads from ``data`` then EOF (a GET again
    after each response that leaves the connection open)."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=ORACLE_MAX_HEAD)
    messages: list[Message] = []
    head: Any = None
    body: list[bytes] = []
    eof = trailing = False

    def ask() -> None:
        conn.send(h11.Request(method="GET", target="/", headers=[(b"host", b"origin.example")]))
        conn.send(h11.EndOfMessage())

    try:
        ask()
        if data:  # b"" is the close, given below
            conn.receive_data(data)
        while True:
            try:
                event = conn.next_event()
            except h11.ProtocolError as exc:
                verdict = INCOMPLETE if eof and (head is not None or trailing) else REFUSED
                return Reading(tuple(messages), verdict, f"{type(exc).__name__}: {exc}")
            if event is h11.NEED_DATA:
                if eof:
                    break
                trailing = bool(conn.trailing_data[0])
                eof = True
                conn.receive_data(b"")
                continue
            if isinstance(event, h11.InformationalResponse):
                messages.append(_h11_message(event, [], [], True))
            elif isinstance(event, h11.Response):
                head, body = event, []
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                # h11 ends a body read to the close with both sides DONE: not kept all the same.
                keep = conn.our_state is h11.DONE and conn.their_state is h11.DONE and not eof
                messages.append(_h11_message(head, body, event.headers.raw_items(), keep))
                head = None
                if not keep or not conn.trailing_data[0]:
                    break  # closing, or every byte read: the origin may close now
                conn.start_next_cycle()
                ask()
            else:  # ConnectionClosed, or PAUSED after a 101
                break
    except h11.ProtocolError as exc:
        return Reading(tuple(messages), REFUSED, f"{type(exc).__name__}: {exc}")
    return Reading(tuple(messages), ACCEPTED)


# -- llhttp (httptools) ----------------------------------------------------------------------


class _LLHTTP:
    """httptools callbacks gathered into messages. Headers arriving after the head are
    trailers; llhttp's own keep-alive verdict is taken at each message's end."""

    def __init__(self, response: bool) -> None:
        self.parser: Any = (
            httptools.HttpResponseParser(self) if response else httptools.HttpRequestParser(self)
        )
        self.messages: list[Message] = []
        self.begun = False
        self.headers_done = False
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.start: tuple[object, ...] = ()

    def on_message_begin(self) -> None:
        self.begun, self.headers_done = True, False
        self._reset()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        (self.trailers if self.headers_done else self.headers).append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        version = self.parser.get_http_version().encode()
        if isinstance(self.parser, httptools.HttpResponseParser):
            self.start = (self.parser.get_status_code(), version)
        else:
            self.start = (self.parser.get_method(), self.url, version)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.finish(bool(self.parser.should_keep_alive()))

    def finish(self, keep: bool) -> None:
        trailers = canonical(self.trailers)
        self.messages.append(
            Message(self.start, canonical(self.headers), b"".join(self.body), trailers, keep)
        )
        self.begun = False

    def needs_eof(self) -> bool:
        """llhttp_message_needs_eof, for a response whose head was read (httptools has
        no llhttp_finish: a body read to the close is ended here)."""
        status = self.start[0]
        assert isinstance(status, int)
        if status // 100 == 1 or status in (204, 304):
            return False
        codings = [v.lower().split(b",")[-1].strip() for n, v in self.headers if _is(n, b"te")]
        if codings:
            return codings[-1] != b"chunked"
        return not any(_is(n, b"cl") for n, _ in self.headers)


def _is(name: bytes, what: bytes) -> bool:
    return name.lower() == {b"te": b"transfer-encoding", b"cl": b"content-length"}[what]


def llhttp_requests(data: bytes) -> Reading:
    side = _LLHTTP(response=False)
    try:
        side.parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        return Reading(tuple(side.messages), ACCEPTED)
    except httptools.HttpParserError as exc:
        return Reading(tuple(side.messages), REFUSED, f"{type(exc).__name__}: {exc}")
    return Reading(tuple(side.messages), INCOMPLETE if side.begun else ACCEPTED)


def llhttp_responses(data: bytes) -> Reading:
    side = _LLHTTP(response=True)
    try:
        side.parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        return Reading(tuple(side.messages), ACCEPTED)
    except httptools.HttpParserError as exc:
        return Reading(tuple(side.messages), REFUSED, f"{type(exc).__name__}: {exc}")
    if side.begun:
        if side.headers_done and side.needs_eof():
            side.finish(False)  # llhttp_finish: the close ends a body read to the close
        else:
            return Reading(tuple(side.messages), INCOMPLETE)
    return Reading(tuple(side.messages), ACCEPTED)


ORACLES: Final[dict[str, dict[str, Callable[[bytes], Reading]]]] = {
    "request": {"h11": h11_requests, "llhttp": llhttp_requests},
    "response": {"h11": h11_responses, "llhttp": llhttp_responses},
}


@dataclass(frozen=True, slots=True)
class Quirk:
    oracle: str
    applies: Callable[[Reading, bytes], bool]  # on that oracle's reading, and the input
    why: str


QUIRKS: Final[dict[str, Quirk]] = {
    # An oracle's reading that is wrong by the RFC is set aside for that input (counted,
    # not compared): ssekit is then held to the other oracle alone.
    "llhttp-1xx-body": Quirk(
        "llhttp",
        lambda r, data: any(
            isinstance(m.start[0], int) and 104 <= m.start[0] < 200 for m in r.messages
        ),
        "llhttp ends only 100-103 at the head; a 104-199 with Content-Length gets a body "
        "(RFC 9110 15.2: a 1xx response cannot contain content)",
    ),
    "h11-connect-body": Quirk(
        "h11",
        # h11 waits for that "body", so its reading has no message to look at: the input.
        lambda r, data: re.search(rb"(?:^|\n)CONNECT ", data) is not None
        and (b"content-length" in data.lower() or b"transfer-encoding" in data.lower()),
        "h11 reads a CONNECT request's declared Content-Length or chunked coding as a body; "
        "a CONNECT has no content (RFC 9110 9.3.6), as llhttp and ssekit read it",
    ),
}


# -- Comparing readings ----------------------------------------------------------------------

SAME: Final = "same"
STRICT: Final = "stricter"  # ssekit refused (or closed) where the oracle read on
LAX: Final = "laxer"  # ssekit accepted what the oracle refused
DIFFERS: Final = "differs"  # both read on, differently


def compare(ours: Reading, theirs: Reading) -> tuple[str, str]:
    """How ssekit's reading stands to one oracle's: (relation, what differs or why)."""
    for mine, other in zip(ours.messages, theirs.messages, strict=False):
        if mine.start != other.start:
            return DIFFERS, "start line"
        if mine.headers != other.headers:
            return DIFFERS, "headers"
        if is_switch(mine):
            return SAME, ""  # the bytes after it are not HTTP (a tunnel, another protocol)
        if mine.body != other.body:
            return DIFFERS, "body"
        if mine.trailers is not None and other.trailers is not None:
            if mine.trailers != other.trailers:
                return DIFFERS, "trailers"
        if mine.keep != other.keep:
            return (STRICT, "closes") if not mine.keep else (LAX, "keeps the connection")
        if not mine.keep:
            return SAME, ""  # both close: what follows is never read
    mine_n, other_n = len(ours.messages), len(theirs.messages)
    if mine_n < other_n:
        # ssekit refused a message the oracle read (stricter), or did not see its end
        # where the oracle did (it read on into the next message: a desync).
        return (STRICT, "refused") if ours.verdict == REFUSED else (DIFFERS, "message boundary")
    if mine_n > other_n:
        # The oracle refused a message ssekit read, or did not see its end.
        return (LAX, "accepted") if theirs.verdict == REFUSED else (DIFFERS, "message boundary")
    pair = (ours.verdict, theirs.verdict)
    if ours.verdict == theirs.verdict or pair == (INCOMPLETE, REFUSED):
        return SAME, ""  # waiting for bytes that an oracle already refuses is not accepting
    if ours.verdict == REFUSED:
        return STRICT, "refused"
    if pair == (INCOMPLETE, ACCEPTED):
        # The same messages, then bytes ssekit holds as the start of another where the
        # oracle saw none (llhttp skips CR and LF between messages): nothing read otherwise.
        return STRICT, "waits"
    if theirs.verdict == REFUSED:
        return LAX, "accepted"
    # ssekit read every byte as whole messages where the oracle holds part of another.
    return DIFFERS, "message boundary"


def stricter_category(ours: Reading, why: str) -> str:
    """The STRICTER category of a refusal (or a closed connection, or a wait)."""
    if why == "closes":
        last = ours.messages[-1] if ours.messages else None
        if last and last.start[-1] == b"1.0":
            return "http/1.0-keep-alive"
        names = {name for name, _ in last.headers} if last else set()
        if {b"content-length", b"transfer-encoding"} <= names:
            return "length-beside-coding"
        return "other"
    if why == "waits":
        return "line-break-between-messages"
    for name, category in STRICTER.items():
        if re.search(category.pattern, ours.error):
            return name
    return "other"


def error_shape(error: str) -> str:
    """An error message with its quoted values and numbers elided, to group refusals."""
    return re.sub(r"b'(?:[^'\\]|\\.)*'|b\"(?:[^\"\\]|\\.)*\"|\d+", "…", error)[:150]


# -- Cuts --------------------------------------------------------------------------------


def cut_sets(data: bytes, exhaustive: bool) -> list[list[int]]:
    """Where to cut ``data``: whole, byte by byte (in pieces of 1 to 4 bytes past
    EXHAUSTIVE), every single cut when ``exhaustive`` and small, then cuts derived
    from the input itself (beside CRs and LFs, and random), so a finding replays exactly."""
    n = len(data)
    sets: list[list[int]] = [[]]
    if n <= EXHAUSTIVE:
        sets.append(list(range(1, n)))
    else:  # pieces of 1, 2 and 4 bytes
        sets.append([i for i in range(1, n) if i % 7 in (0, 1, 3)])
    if exhaustive and n <= EXHAUSTIVE:
        sets += [[i] for i in range(1, n)]
        return sets
    rnd = random.Random(int.from_bytes(hashlib.sha256(data).digest()[:8], "big"))
    breaks = [i for i, byte in enumerate(data) if byte in b"\r\n"]
    for i in rnd.sample(breaks, min(len(breaks), 6)):
        sets += [[i], [i + 1]]  # before and after a CR or LF
    for _ in range(4 if n > 1 else 0):
        sets.append(sorted(rnd.sample(range(1, n), min(n - 1, rnd.randint(1, 8)))))
    return sets


def pieces_of(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def ssekit_readings(target: str, data: bytes, sets: list[list[int]]) -> list[Reading]:
    pieces = [pieces_of(data, cuts) for cuts in sets]
    if target == "request":
        return [ssekit_requests(p) for p in pieces]
    return ssekit_responses_all(pieces)


# -- Judging one input ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # "split", "accepts what both refuse", "reads differently", "crash"
    target: str
    detail: str  # which oracle, what differs
    readings: tuple[tuple[str, Reading], ...]  # (side, its reading)
    note: str = ""  # not part of the signature
    cause: str = ""  # what the family keeps of the detail

    @property
    def signature(self) -> tuple[str, str, str]:
        """What makes two findings one finding class in a report."""
        return (self.kind, self.target, self.detail)

    @property
    def family(self) -> tuple[str, str, str]:
        """A coarser signature: a mutant of a KNOWN_BUGS file that finds the same bug
        in another way (other verdicts, another oracle's complaint) is known too."""
        return (self.kind, self.target, self.cause)


@dataclass
class Outcome:
    findings: list[Finding] = field(default_factory=list)
    stricter: list[tuple[str, str, str]] = field(default_factory=list)  # oracle, category, error
    quirks: list[str] = field(default_factory=list)  # QUIRKS that set an oracle aside


def judge(
    target: str, data: bytes, ours: list[Reading], oracles: dict[str, Reading] | None = None
) -> Outcome:
    """The verdict on ``data``: ssekit's readings (one per way of cutting it, the
    whole input first) against each other, then the whole one against each oracle's."""
    outcome = Outcome()
    whole = ours[0]
    crashed = [reading for reading in ours if reading.verdict == CRASHED]
    if crashed:
        detail = error_shape(crashed[0].error)
        sides = (("ssekit", crashed[0]),)
        outcome.findings.append(Finding("crash", target, detail, sides, cause=detail))
        return outcome
    for reading in ours[1:]:
        if reading != whole:
            # The refusal that depends on the cut names the cause.
            blame = error_shape((reading if reading.verdict == REFUSED else whole).error)
            detail = f"{whole.verdict} whole, {reading.verdict} cut: {blame}"
            sides = (("ssekit whole", whole), ("ssekit cut", reading))
            outcome.findings.append(Finding("split", target, detail, sides, cause=blame))
            break
    if oracles is None:
        oracles = {name: read(data) for name, read in ORACLES[target].items()}
    for name in list(oracles):
        for quirk, rule in QUIRKS.items():
            if rule.oracle == name and rule.applies(oracles[name], data):
                outcome.quirks.append(quirk)  # this oracle's reading is set aside
                del oracles[name]
                break
    relations = {name: compare(whole, theirs) for name, theirs in oracles.items()}
    lax = [relation for relation, _ in relations.values() if relation == LAX]
    if len(lax) == len(ORACLES[target]):
        sides = (("ssekit", whole), *oracles.items())
        # Named after why h11 refuses (its messages name the cause, not the input).
        what = f"h11: {error_shape(oracles['h11'].error)}"
        outcome.findings.append(Finding("accepts what both refuse", target, what, sides))
        return outcome
    agreed = [name for name, (relation, _) in relations.items() if relation == SAME]
    for name, (relation, what) in relations.items():
        if relation == DIFFERS:
            # Read otherwise than by an oracle that read on: a finding even when the
            # other oracle reads as ssekit does (the note says so).
            note = f"ssekit reads as {agreed[0]} does" if agreed else ""
            sides = (("ssekit", whole), (name, oracles[name]))
            detail = f"vs {name}: {what}"
            outcome.findings.append(
                Finding("reads differently", target, detail, sides, note, cause=detail)
            )
        elif relation == STRICT:
            error = whole.error or f"ssekit {what} where {name} reads on"
            outcome.stricter.append((name, stricter_category(whole, what), error))
    return outcome


# -- Minimising ------------------------------------------------------------------------------


def check(target: str, data: bytes, exhaustive: bool = False) -> Outcome:
    sets = cut_sets(data, exhaustive)
    return judge(target, data, ssekit_readings(target, data, sets))


def minimise(target: str, data: bytes, finding: Finding, budget: int = 400) -> bytes:
    """A shorter input with a finding of the same signature (removals only, greedy)."""
    want = finding.signature

    def still(candidate: bytes) -> bool:
        nonlocal budget
        budget -= 1
        return any(f.signature == want for f in check(target, candidate, True).findings)

    size = max(1, len(data) // 2)
    while size >= 1 and budget > 0:
        i = 0
        while i < len(data) and budget > 0:
            candidate = data[:i] + data[i + size :]
            if candidate and still(candidate):
                data = candidate
            else:
                i += size
        size //= 2
    return data


# -- Mutation ------------------------------------------------------------------------------

TOKENS: Final = [
    b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"\n\n", b" ", b"\t", b"\x00", b"\x0b", b"\x7f", b"\xff",
    b":", b";", b",", b"=", b'"', b"0", b"00", b"1", b"5", b"f", b"F", b"x", b"0x", b"+", b"-",
    b"chunked", b"identity", b"gzip", b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 5\r\n", b"Content-Length: 0\r\n", b"Transfer-Encoding: ",
    b"Content-Length: ", b"Connection: close\r\n", b"Connection: keep-alive\r\n",
    b"Host: a\r\n", b"Expect: 100-continue\r\n", b"Upgrade: websocket\r\n",
    b"HTTP/1.0", b"HTTP/1.1", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"HTTP/1.1 200 OK\r\n",
    b"0\r\n\r\n", b"0\r\n", b"5\r\nhello\r\n", b";ext=1", b";a=\"b\"", b"X: y\r\n",
    b"18446744073709551616", b"ffffffffffffffff", b"10000000000000000",
]  # fmt: skip
_LINE_BREAK = re.compile(rb"\r\n|\n|\r")
_DIGITS = re.compile(rb"[0-9A-Fa-f]+")


def mutate(rnd: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(9)
        pos = rnd.randint(0, len(buf))
        if op == 0:
            buf[pos:pos] = rnd.choice(TOKENS)
        elif op == 1 and buf:
            del buf[pos : pos + rnd.randint(1, 8)]
        elif op == 2 and buf:
            i = rnd.randrange(len(buf))
            buf[i] ^= 1 << rnd.randrange(8)
        elif op == 3:
            buf[pos:pos] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 4)))
        elif op == 4:  # splice a piece of another corpus input
            other = rnd.choice(pool)
            a = rnd.randint(0, len(other))
            buf[pos:pos] = other[a : a + rnd.randint(1, 64)]
        elif op == 5:  # swap one line break for another
            breaks = list(_LINE_BREAK.finditer(buf))
            if breaks:
                m = rnd.choice(breaks)
                buf[m.start() : m.end()] = rnd.choice([b"\r\n", b"\n", b"\r", b"\n\r", b""])
        elif op == 6:  # duplicate a line (a header field, a chunk)
            lines = bytes(buf).split(b"\n")
            if len(lines) > 1:
                i = rnd.randrange(len(lines))
                lines.insert(i, lines[i])
                buf = bytearray(b"\n".join(lines))
        elif op == 7:  # change a number (a length, a chunk size, a status)
            numbers = list(_DIGITS.finditer(buf))
            if numbers:
                m = rnd.choice(numbers)
                new = rnd.choice([b"0", b"1", b"7", b"00" + m[0], m[0] + b"0", b"fffffffff", b""])
                buf[m.start() : m.end()] = new
        else:  # a long run, past line and size bounds
            buf[pos:pos] = rnd.choice([b"a", b" ", b"0", b";", b"x: y\r\n"]) * rnd.choice(
                [100, 4097, 5000]
            )
    return bytes(buf[:MAX_INPUT])


# -- Running ---------------------------------------------------------------------------------


def corpus_files(target: str) -> list[Path]:
    prefixes = ("req-",) if target == "request" else ("resp-",)
    return sorted(p for p in CORPUS.iterdir() if p.name.startswith(prefixes))


def target_of(path: Path) -> str:
    return "request" if path.name.startswith("req-") else "response"


def save(finding: Finding, data: bytes, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{finding.target}-{hashlib.sha256(data).hexdigest()[:16]}"
    path = folder / name
    path.write_bytes(data)
    return path


_RUN = re.compile(rb"(.)\1{15,}", re.DOTALL)


def shown(data: bytes) -> str:
    """``data`` as a Python expression, long runs of one byte written ``b'e' * 10240``."""
    parts: list[str] = []
    last = 0
    for run in _RUN.finditer(data):
        if run.start() > last:
            parts.append(repr(data[last : run.start()]))
        parts.append(f"{run[1]!r} * {len(run[0])}")
        last = run.end()
    if last < len(data) or not parts:
        parts.append(repr(data[last:]))
    return " + ".join(parts)


def report(finding: Finding, data: bytes, status: str) -> None:
    note = f" ({finding.note})" if finding.note else ""
    what = f"{status} {finding.kind} [{finding.target}] {finding.detail}{note}"
    print(f"{what}: {shown(data)}")
    for side, reading in finding.readings:
        print(f"    {side}: {reading.show()}")


class Run:
    """Findings and tallies across many inputs, one report per finding class."""

    def __init__(self, known: set[tuple[str, str, str]], folder: Path = FINDINGS) -> None:
        self.known = known
        self.folder = folder  # where each finding's input is saved
        self.seen: Counter[tuple[str, str, str]] = Counter()
        self.stricter: Counter[tuple[str, str, str]] = Counter()
        self.examples: dict[tuple[str, str, str], bytes] = {}
        self.others: Counter[tuple[str, str]] = Counter()  # (target, error shape)
        self.examples_other: dict[tuple[str, str], bytes] = {}
        self.quirks: Counter[str] = Counter()
        self.failed = False
        self.inputs = 0

    def take(
        self, target: str, data: bytes, outcome: Outcome, known: bool = False, every: bool = False
    ) -> None:
        self.inputs += 1
        self.quirks.update(outcome.quirks)
        for oracle, category, error in outcome.stricter:
            key = (target, oracle, category)
            self.stricter[key] += 1
            if key not in self.examples or len(data) < len(self.examples[key]):
                self.examples[key] = data
            if category == "other":
                shape = (target, error_shape(error))
                self.others[shape] += 1
                if shape not in self.examples_other or len(data) < len(self.examples_other[shape]):
                    self.examples_other[shape] = data
        for finding in outcome.findings:
            signature = finding.signature
            self.seen[signature] += 1
            if self.seen[signature] > 1 and not every:
                continue
            is_known = known or finding.family in self.known
            status = "KNOWN" if is_known else "FINDING"
            if not every:  # the mutation loop: minimise the first of each class
                small = minimise(target, data, finding)
                again = [f for f in check(target, small, True).findings if f.signature == signature]
                finding = again[0] if again else finding
            else:
                small = data
            report(finding, small, status)
            print(f"    saved {save(finding, small, self.folder)}")
            self.failed |= not is_known

    def summary(self) -> None:
        if self.stricter:
            print("stricter than an oracle (allowed), by category, with the shortest example:")
            for (target, oracle, category), count in sorted(self.stricter.items()):
                example = shown(self.examples[(target, oracle, category)])
                print(f"    {target} vs {oracle}: {category}: {count}, e.g. {example[:160]}")
        if self.others:
            print("refusals in no STRICTER category (review, then name them):")
            for (target, shape), count in self.others.most_common(12):
                example = shown(self.examples_other[(target, shape)])[:160]
                print(f"    {target}: {count} x {shape}, e.g. {example}")
        for quirk, count in sorted(self.quirks.items()):
            print(f"oracle quirk {quirk}: that oracle set aside for {count} input(s)")
        print(f"{self.inputs} inputs, {len(self.seen)} finding class(es)")


def known_signatures() -> set[tuple[str, ...]]:
    """The finding classes the KNOWN_BUGS corpus files show (so mutants of them are known)."""
    out: set[tuple[str, ...]] = set()
    for name in sorted(KNOWN_BUGS):
        path = CORPUS / name
        if path.exists():
            outcome = check(target_of(path), path.read_bytes(), True)
            out.update(f.family for f in outcome.findings)
    return out


def replay(run: Run, targets: tuple[str, ...]) -> None:
    """Every corpus file at every cut; a KNOWN_BUGS file's findings do not fail."""
    files = 0
    for target in targets:
        for path in corpus_files(target):
            files += 1
            data = path.read_bytes()
            outcome = check(target, data, exhaustive=True)
            known = path.name in KNOWN_BUGS
            if known and not outcome.findings:
                print(f"NOTE {path.name} is in KNOWN_BUGS but finds nothing now: delete the entry")
            if outcome.findings:
                print(f"{path.name}:")
            run.take(target, data, outcome, known=known, every=True)
    print(f"replayed {files} corpus files")


def mutation_loop(run: Run, targets: tuple[str, ...], seconds: float, seed: int) -> None:
    rnd = random.Random(seed)
    pools = {t: [p.read_bytes() for p in corpus_files(t)] or [b""] for t in targets}
    deadline = time.monotonic() + seconds
    start = time.monotonic()
    count = 0
    while time.monotonic() < deadline:
        target = targets[count % len(targets)]
        pool = pools[target]
        data = mutate(rnd, rnd.choice(pool), pool)
        run.take(target, data, check(target, data))
        count += 1
        if count % 200 == 0 and len(pool) < 2000:
            pool.append(data)
    took = time.monotonic() - start
    rate = count / max(took, 1e-9)
    print(f"mutation loop: {count} inputs in {took:.0f}s ({rate:.0f}/s), seed {seed}")


def run_atheris(targets: tuple[str, ...], seconds: float, libfuzzer: list[str]) -> int:
    """Coverage-guided: atheris mutates (the corpus as seeds, first byte picks the target)
    and stops at the first finding not known, leaving libFuzzer's crash file."""
    try:
        import atheris  # type: ignore[import-not-found]
    except ImportError:
        print(
            "--atheris needs the atheris package (pip install atheris: wheels for CPython "
            "on x86-64 Linux), which is not installed here; the built-in mutation loop "
            "(--seconds N) needs nothing",
            file=sys.stderr,
        )
        return 2
    known = known_signatures()

    def one(data: bytes) -> None:
        target = targets[data[0] % len(targets)] if data else targets[0]
        outcome = check(target, data[1:MAX_INPUT])
        for finding in outcome.findings:
            if finding.family not in known:
                report(finding, data[1:], "FINDING")
                raise RuntimeError(f"{finding.kind} [{target}]: {finding.detail}")

    # Seeds: the corpus up to ATHERIS_MAX_LEN (instrumented, a 60 KB head takes seconds).
    seeds = FINDINGS / "atheris-seeds"
    seeds.mkdir(parents=True, exist_ok=True)
    for path in sorted(CORPUS.iterdir()):
        data = path.read_bytes()
        if target_of(path) in targets and len(data) < ATHERIS_MAX_LEN:
            tag = bytes([targets.index(target_of(path))])
            (seeds / path.name).write_bytes(tag + data)
    flags = [f"-max_len={ATHERIS_MAX_LEN}", "-timeout=60"]
    flags += [f"-max_total_time={int(seconds)}"] if seconds else []
    atheris.instrument_all()
    atheris.Setup([sys.argv[0], *flags, *libfuzzer, str(seeds)], one)
    atheris.Fuzz()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--replay", action="store_true", help="replay fuzz/http_corpus/ first")
    parser.add_argument("--seconds", type=float, default=0, help="mutation loop time box")
    parser.add_argument("--seed", type=int, default=20261122, help="mutation loop seed")
    parser.add_argument(
        "--atheris",
        action="store_true",
        help="coverage-guided with atheris (libFuzzer flags such as -jobs=4 pass through)",
    )
    parser.add_argument("--target", choices=("request", "response", "all"), default="all")
    args, rest = parser.parse_known_args()
    if rest and not args.atheris:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    targets = TARGETS if args.target == "all" else (args.target,)

    if args.atheris:
        return run_atheris(targets, args.seconds, rest)
    run = Run(known_signatures())
    if args.replay:
        replay(run, targets)
    if args.seconds:
        mutation_loop(run, targets, args.seconds, args.seed)
    run.summary()
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
