"""The server side's own HTTP/1.1 (``ssekit._http._server``), held to h11 on the same bytes.

The proxy and the mock served their clients through h11 before; these tests
keep them to what h11 (RFC 9112) does. Generated requests mix valid and broken
request lines, fields, folds, LF-only lines, Content-Length and
Transfer-Encoding in every arrangement, bodies framed both ways, pipelined
requests and early closes, fed in pieces cut anywhere: the connection must
see the same requests, the same body bytes, the same ends, the same refusals.
Generated responses (status, framing fields, Connection, body sizes) to GET,
HEAD and POST requests of HTTP/1.0 and 1.1 clients must come out byte for
byte as h11 writes them, with the same verdict on keeping the connection.
"""

from __future__ import annotations

import itertools
import re

import h11
import hypothesis.strategies as st
import pytest
from hypothesis import example, given

from ssekit._http import _server
from ssekit._http._server import RequestError, ServerConnection, Signal
from ssekit._http._wire import RequestHead, WireError, has_blank_line, parse_request_head

LIMIT = 4096

Trace = list[tuple[object, ...]]


def h11_trace(data: bytes, cuts: list[int], close: bool, every: int = 1) -> Trace:
    """What h11, serving, makes of ``data`` fed at ``cuts`` (then EOF if ``close``),
    reading events after each ``every`` pieces: each request, its body (joined), its
    end. Each request is answered with an empty 404 before the next is read (a 2xx
    would accept a CONNECT, which the proxy refuses anyway)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=LIMIT)
    trace: Trace = []
    try:
        for pieces in _pieces(data, cuts, close, every):
            for piece in pieces:
                conn.receive_data(piece)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    break
                if isinstance(event, h11.Request):
                    headers = list(event.headers)
                    trace.append(("request", event.method, event.target, event.http_version))
                    trace.append(("headers", headers, conn.they_are_waiting_for_100_continue))
                elif isinstance(event, h11.Data):
                    _add_body(trace, bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    trace.append(("end",))
                    conn.send(h11.Response(status_code=404, headers=[(b"content-length", b"0")]))
                    conn.send(h11.EndOfMessage())
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        trace.append(("kept", False))
                        return trace
                    conn.start_next_cycle()
                    trace.append(("kept", True))
                elif isinstance(event, h11.ConnectionClosed):
                    trace.append(("closed",))
                    return trace
                else:  # PAUSED: an upgrade or CONNECT waits for an answer; not served here
                    trace.append(("paused",))
                    return trace
    except h11.RemoteProtocolError as exc:
        trace.append(("error", 431 if exc.error_status_hint == 431 else 400))
    return trace


def our_trace(data: bytes, cuts: list[int], close: bool, every: int = 1) -> Trace:
    conn = ServerConnection(LIMIT)
    trace: Trace = []
    try:
        for pieces in _pieces(data, cuts, close, every):
            for piece in pieces:
                conn.receive_data(piece)
            while True:
                event = conn.next_event()
                if event is Signal.NEED_DATA:
                    break
                if isinstance(event, RequestHead):
                    trace.append(("request", event.method, event.target, event.http_version))
                    trace.append(("headers", event.headers, conn.waiting_for_100))
                elif isinstance(event, bytes):
                    _add_body(trace, event)
                elif event is Signal.END:
                    trace.append(("end",))
                    conn.send_response(404, [(b"content-length", b"0")])
                    conn.send_end()
                    if not conn.reusable:
                        trace.append(("kept", False))
                        return trace
                    conn.start_next_cycle()
                    trace.append(("kept", True))
                elif event is Signal.CLOSED:
                    trace.append(("closed",))
                    return trace
                else:
                    trace.append(("paused",))
                    return trace
    except RequestError as exc:
        trace.append(("error", exc.status))
    return trace


def _pieces(data: bytes, cuts: list[int], close: bool, every: int) -> list[list[bytes]]:
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    if close:
        pieces.append(b"")
    return [pieces[i : i + every] for i in range(0, len(pieces), every)]


def _add_body(trace: Trace, data: bytes) -> None:
    if trace and trace[-1][0] == "body":
        trace[-1] = ("body", trace[-1][1] + data)  # type: ignore[operator]
    else:
        trace.append(("body", data))


request_lines = st.sampled_from(
    [b"GET / HTTP/1.1", b"POST /v1/chat/completions HTTP/1.1", b"GET /a?b=c HTTP/1.0",
     b"HEAD / HTTP/1.1", b"GET / HTTP/1.2", b"GET / HTTP/2.0", b"GET  / HTTP/1.1",
     b"GET / http/1.1", b"GET /\xe9 HTTP/1.1", b"G(T / HTTP/1.1", b"GET / HTTP/1.1 ",
     b"GET /", b"", b" GET / HTTP/1.1", b"\x16\x03\x01", b"OPTIONS * HTTP/1.1",
     b"CONNECT example.com:443 HTTP/1.1"]
)  # fmt: skip
names = st.sampled_from(
    [b"Host", b"host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Expect",
     b"Upgrade", b"X-A", b"Bad Name", b""]
)  # fmt: skip
values = st.sampled_from(
    [b"x", b"3", b"0", b"3, 3", b"3, 4", b"99999999999999999999999", b"chunked", b"Chunked",
     b"gzip", b"gzip, chunked", b"close", b"keep-alive", b"100-continue", b"websocket", b"",
     b" padded ", b"a\x00b", b"\xff"]
)  # fmt: skip
separators = st.sampled_from([b": ", b":", b" : ", b":\t"])
bodies = st.sampled_from(
    [b"", b"abc", b"abcdef", b"3\r\nabc\r\n0\r\n\r\n", b"3;ext=1\r\nabc\r\n0\r\n\r\n",
     b"3\r\nabc\r\n0\r\nTrailer: t\r\n\r\n", b"3\r\nabcd\r\n0\r\n\r\n", b"zz\r\n",
     b"3\r\nab", b"1\r\na\r\n"]
)  # fmt: skip


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    end = draw(st.sampled_from([b"\r\n", b"\n"]))
    lines = [draw(request_lines)]
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.integers(0, 12)) == 0:
            lines.append(draw(st.sampled_from([b" folded", b"\tmore"])))
        else:
            lines.append(draw(names) + draw(separators) + draw(values))
    return end.join(lines) + end + end + draw(bodies)


@given(
    st.lists(requests(), min_size=1, max_size=3),
    st.lists(st.integers(0, 400)),
    st.booleans(),
    st.integers(1, 3),
)
@example([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"], [], True, 1)
@example([b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"], [], False, 1)  # a blank line first
@example([b"\x16\x03\x01\x02\x00"], [], False, 1)  # TLS to a plain port: refused at once
@example([b"CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n"], [], False, 1)
@example([b"GET / HTTP/1.1\r\n\r\n"], [], False, 1)  # no Host
@example([b"GET / HTTP/1.0\r\n\r\n"], [], False, 1)  # 1.0: no Host needed, never kept
@example([b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"], [], False, 1)
@example([b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc"], [5, 30], False, 1)
@example([b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"], [], False, 1)
@example(
    [b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n"],
    [],
    False,
    1,
)  # a chunk longer than its size: refused
@example(
    [b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"],
    [],
    False,
    1,
)
@example([b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx"], [], False, 1)
@example(
    [b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
     b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"],
    [10, 70], True, 2,
)  # fmt: skip
def test_requests_are_read_exactly_as_h11_reads_them(
    messages: list[bytes], cuts: list[int], close: bool, every: int
) -> None:
    data = b"".join(messages)
    ours, theirs = our_trace(data, cuts, close, every), h11_trace(data, cuts, close, every)
    ours, theirs = _settled(ours), _settled(theirs)
    if ours != theirs and deliberately_stricter(data):
        # ssekit refuses (400) a request h11 reads: everything before it read alike.
        assert ours[-1] == ("error", 400)
        assert theirs[: len(ours) - 1] == ours[:-1]
        return
    assert ours == theirs


_HOST = re.compile(rb"(?:[0-9A-Za-z._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*(?::[0-9]*)?")


def deliberately_stricter(data: bytes) -> bool:
    """True when ``data`` holds what ssekit refuses on purpose where h11 reads on (the
    table in the README): an obsolete line fold in a head, a Host that is not
    ``host[:port]``."""
    lines = [line.rstrip(b"\r") for line in data.split(b"\n")]
    if any(line[:1] in (b" ", b"\t") for line in lines):
        return True
    fields = [line.partition(b":") for line in lines]
    return any(
        name.strip().lower() == b"host" and not _HOST.fullmatch(value.strip(b" \t"))
        for name, colon, value in fields
        if colon
    )


def _settled(trace: Trace) -> Trace:
    """The trace without the body of a request whose body broke HTTP/1.1: h11 hands on
    the valid bytes of the read that broke a chunked body before it fails; ssekit
    refuses that read whole (nothing of it goes upstream). Both fail it."""
    if len(trace) > 1 and trace[-1][0] == "error" and trace[-2][0] == "body":
        return trace[:-2] + trace[-1:]
    return trace


def test_a_head_sent_a_byte_at_a_time_costs_its_size_not_its_square(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slow client (slowloris) must not make each byte re-read all the others."""
    looked_at: list[int] = []

    def parse(data: bytes, max_fields: int | None = None) -> object:
        looked_at.append(len(data))
        return parse_request_head(data, max_fields)

    def search(data: bytes | bytearray, start: int = 0) -> bool:
        looked_at.append(len(data) - start)
        return has_blank_line(data, start)

    monkeypatch.setattr(_server, "parse_request_head", parse)
    monkeypatch.setattr(_server, "has_blank_line", search, raising=False)
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 20_000 + b"\r\n\r\n"
    conn = ServerConnection(1 << 16)
    events = []
    for i in range(len(head)):
        conn.receive_data(head[i : i + 1])
        events.append(conn.next_event())
    assert events[:-1] == [Signal.NEED_DATA] * (len(head) - 1)
    assert isinstance(events[-1], RequestHead)
    assert sum(looked_at) <= 5 * len(head)


@pytest.mark.parametrize("size", [LIMIT - 100, LIMIT + 100])
def test_a_head_over_the_limit_is_a_431_as_in_h11(size: int) -> None:
    data = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size  # still no blank line
    assert our_trace(data, [], False) == h11_trace(data, [], False)
    assert (our_trace(data, [], False) == [("error", 431)]) == (size > LIMIT)


statuses = st.sampled_from([200, 201, 204, 304, 404, 500])
response_fields = st.lists(
    st.sampled_from(
        [(b"content-type", b"text/event-stream"), (b"content-length", b"0"),
         (b"content-length", b"5"), (b"transfer-encoding", b"chunked"),
         (b"connection", b"close"), (b"Connection", b"keep-alive"), (b"connection", b"upgrade"),
         (b"host", b"h"), (b"via", b"1.1 ssekit")]
    ),
    max_size=4,
)  # fmt: skip


@given(
    st.sampled_from([b"GET", b"HEAD", b"POST"]),
    st.sampled_from([b"1.0", b"1.1"]),
    st.booleans(),
    statuses,
    st.sampled_from([b"", b"OK"]),
    response_fields,
    st.lists(st.sampled_from([b"", b"abc", b"de"]), max_size=3),
)
@example(b"GET", b"1.1", False, 200, b"", [(b"content-type", b"text/event-stream")], [b"ab"])
@example(b"GET", b"1.0", False, 200, b"", [(b"content-type", b"text/event-stream")], [b"ab"])
@example(b"HEAD", b"1.0", False, 200, b"OK", [], [])
@example(b"GET", b"1.1", True, 200, b"", [(b"Connection", b"keep-alive")], [])
@example(b"GET", b"1.1", False, 200, b"", [(b"content-length", b"5")], [b"abc", b"de"])
@example(b"GET", b"1.1", False, 204, b"", [(b"transfer-encoding", b"chunked")], [])
@example(b"GET", b"1.0", False, 200, b"", [(b"content-length", b"0")] * 2, [])  # one kept
@example(
    b"GET", b"1.1", False, 200, b"", [(b"content-length", b"0"), (b"content-length", b"5")], []
)
def test_responses_are_written_exactly_as_h11_writes_them(
    method: bytes,
    version: bytes,
    close: bool,
    status: int,
    reason: bytes,
    fields: list[tuple[bytes, bytes]],
    body: list[bytes],
) -> None:
    head = b"%s / HTTP/%s\r\nHost: x\r\n" % (method, version)
    if close:
        head += b"Connection: close\r\n"
    theirs = h11.Connection(h11.SERVER)
    theirs.receive_data(head + b"\r\n")
    assert isinstance(theirs.next_event(), h11.Request)
    assert isinstance(theirs.next_event(), h11.EndOfMessage)
    ours = ServerConnection(LIMIT)
    ours.receive_data(head + b"\r\n")
    assert isinstance(ours.next_event(), RequestHead)
    assert ours.next_event() is Signal.END

    try:
        expected = [theirs.send(h11.Response(status_code=status, headers=fields, reason=reason))]
    except h11.LocalProtocolError:  # conflicting lengths, two codings: refused as in h11
        with pytest.raises(WireError):
            ours.send_response(status, fields, reason)
        return
    written = [ours.send_response(status, fields, reason)]
    try:
        expected += [theirs.send(h11.Data(data=piece)) for piece in body]
        expected.append(theirs.send(h11.EndOfMessage()))
    except h11.LocalProtocolError:  # the body does not fit its Content-Length
        with pytest.raises(WireError):
            written += [ours.send_data(piece) for piece in body]
            ours.send_end()
        return
    written += [ours.send_data(piece) for piece in body]
    written.append(ours.send_end())
    assert written == [data or b"" for data in expected]
    assert ours.reusable == (theirs.our_state is h11.DONE and theirs.their_state is h11.DONE)


@pytest.mark.parametrize(
    "fields", [[(b"content-type", b"text/plain")], [(b"content-length", b"2")]]
)
def test_a_response_before_any_request_is_written_as_h11_writes_it(
    fields: list[tuple[bytes, bytes]],
) -> None:
    """An error answer before a request was read: the client's version is unknown, so
    a body of unknown length is ended by closing, as h11 assumes."""
    theirs = h11.Connection(h11.SERVER)
    ours = ServerConnection(LIMIT)
    expected = theirs.send(h11.Response(status_code=400, headers=fields))
    assert ours.send_response(400, fields) == expected
    assert ours.send_data(b"no") == theirs.send(h11.Data(data=b"no"))
    assert ours.send_end() == (theirs.send(h11.EndOfMessage()) or b"")
    assert ours.keep_alive == (theirs.our_state is h11.DONE)  # else MUST_CLOSE


def test_an_informational_response_goes_before_the_final_one_as_h11_writes_it() -> None:
    request = b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    ours = ServerConnection(LIMIT)
    ours.receive_data(request)
    assert isinstance(ours.next_event(), RequestHead)
    assert ours.waiting_for_100
    theirs = h11.Connection(h11.SERVER)
    theirs.receive_data(request)
    theirs.next_event()
    hints = [(b"link", b"</style.css>; rel=preload")]
    assert ours.send_informational(103, hints, b"Early Hints") == theirs.send(
        h11.InformationalResponse(status_code=103, headers=hints, reason=b"Early Hints")
    )
    assert not ours.waiting_for_100  # any response head ends the wait, as in h11
    ours.send_response(200, [(b"content-length", b"0")])
    with pytest.raises(WireError):
        ours.send_informational(100, [])  # too late: the final head went


@pytest.mark.parametrize(
    "field", [(b"x-injected", b"a\r\nEvil: 1"), (b"bad name", b"v"), (b"x", b"a\x00b")]
)
def test_a_response_field_that_would_not_read_back_as_sent_is_refused(
    field: tuple[bytes, bytes],
) -> None:
    ours = ServerConnection(LIMIT)
    ours.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    ours.next_event()
    with pytest.raises(WireError):
        ours.send_response(200, [field])
