"""The origin side's own heads (``ssekit._http._wire``), held to h11 on the same bytes.

Generated response heads mix valid and broken parts (status lines, field names
and values with stray bytes, obsolete folds, LF-only lines, Content-Length and
Transfer-Encoding in every arrangement): ``parse_response_head`` must accept
exactly what h11 accepts, with the same status, reason, version and fields, and
must not see a head before its blank line whatever the cut. Request heads must
come out byte for byte as h11 writes them, and be refused where h11 refuses.
"""

from __future__ import annotations

import h11
import hypothesis.strategies as st
import pytest
from hypothesis import assume, example, given

from ssekit._http._wire import (
    ResponseHead,
    WireError,
    body_framing,
    keep_alive,
    parse_response_head,
    request_head,
)

H11_LIMIT = 1 << 20


def h11_response(data: bytes) -> tuple[h11.Response | h11.InformationalResponse | None, int]:
    """What h11, as a client that sent a GET, makes of ``data``: the head (None while
    incomplete) and how many bytes it took; raises h11.ProtocolError when malformed."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=H11_LIMIT)
    conn.send(h11.Request(method="GET", target="/", headers=[(b"host", b"x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    event = conn.next_event()
    if event is h11.NEED_DATA:
        return None, 0
    assert isinstance(event, h11.Response | h11.InformationalResponse), event
    return event, len(data) - len(conn.trailing_data[0])


def ours(data: bytes) -> ResponseHead | None:
    parsed = parse_response_head(data)
    return None if parsed is None else parsed[0]


names = st.sampled_from(
    [b"Content-Type", b"content-length", b"Transfer-Encoding", b"Connection", b"X-A", b"via"]
) | st.binary(min_size=0, max_size=6)
values = st.sampled_from(
    [b"text/event-stream", b"5", b"5, 5", b"5, 6", b"chunked", b"gzip", b"Chunked", b"close",
     b"", b" padded ", b"a\tb", b"\xff\xfe", b"x\x00y", b"12345678901234567890123"]
) | st.binary(min_size=0, max_size=8)  # fmt: skip
separators = st.sampled_from([b":", b": ", b" : ", b":\t", b""])
status_lines = st.sampled_from(
    [b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 204 No Content", b"HTTP/1.1 200",
     b"HTTP/1.1 200 ", b"HTTP/1.1 404 Not  Found\t", b"HTTP/2.0 200 OK", b"HTTP/1.1 20 OK",
     b"HTTP/1.1  200 OK", b"http/1.1 200 OK", b"HTTP/1.1 103 Early Hints", b"HTTP/1.1 200 \xe9",
     b"HTTP/1.1 200 OK\r", b"ICY 200 OK", b"HTTP/1.1 099 Low", b"HTTP/1.1 000 Zero",
     b"HTTP/1.1 999 High", b"HTTP/1.1 600 Beyond"]
)  # fmt: skip
line_ends = st.sampled_from([b"\r\n", b"\n"])


@st.composite
def response_heads(draw: st.DrawFn) -> bytes:
    end = draw(line_ends)
    lines = [draw(status_lines)]
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.integers(0, 9)) == 0:
            lines.append(draw(st.sampled_from([b" folded", b"\tfolded more"])))
        else:
            lines.append(draw(names) + draw(separators) + draw(values))
    return end.join(lines) + end + draw(line_ends)


def same(head: ResponseHead | None, event: h11.Response | h11.InformationalResponse | None) -> None:
    if event is None:
        assert head is None
        return
    assert head is not None
    assert head.status_code == event.status_code
    assert head.reason == event.reason
    assert head.http_version == event.http_version
    assert head.headers == list(event.headers)


@given(response_heads(), st.binary(max_size=6))
@example(b"HTTP/1.1 200 OK\r\nA: 1\r\n folded\r\n\r\n", b"")
@example(b"HTTP/1.1 200 OK\r\n folded\r\n\r\n", b"")
@example(b"\r\nHTTP/1.1 200 OK\r\n\r\n", b"")
@example(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n", b"")
@example(b"HTTP/1.1 200 OK\r\nTransfer-Encoding:Chunked\r\n\r\n", b"")
@example(b"HTTP/1.1 099 Low\r\n\r\n", b"")
@example(b"HTTP/1.1 200 OK\r\n\n:text/event-stream\r\n\r\n", b"")
@example(
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", b""
)
def test_a_response_head_is_read_exactly_as_h11_reads_it(head: bytes, body: bytes) -> None:
    try:
        expected, size = h11_response(head + body)
    except h11.ProtocolError:
        with pytest.raises(WireError):
            ours(head + body)
        return
    assume(expected is None or expected.status_code != 101)  # an upgrade: not ours to read
    same(ours(head + body), expected)
    parsed = parse_response_head(head + body)
    assert parsed is not None
    assert parsed[1] == size  # the body starts where h11's does


@given(response_heads(), st.data())
def test_no_head_is_seen_before_its_blank_line_whatever_the_cut(
    head: bytes, data: st.DataObject
) -> None:
    try:
        whole = parse_response_head(head)
    except WireError:
        return
    assert whole is not None
    cut = data.draw(st.integers(0, whole[1] - 1))  # anywhere before the head's blank line ends
    assert ours(head[:cut]) is None


def h11_request(method: str, target: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    conn = h11.Connection(h11.CLIENT)
    data = conn.send(h11.Request(method=method, target=target, headers=headers))
    assert data is not None
    return data


methods = st.sampled_from(["GET", "POST", "HEAD", "GE T", "", "PÖST", "M\r\n"])
targets = st.sampled_from(["/", "/v1/chat?x=1", "/a b", "", "/\r\nX: y", "/é", "*"])


@given(methods, targets, st.lists(st.tuples(names | st.just(b"Host"), values), max_size=5))
@example("GET", "/", [(b"Host", b"x"), (b"X-Injected", b"a\r\nEvil: 1")])
@example("GET", "/", [(b"Host", b"x"), (b"Bad Name", b"v")])
@example("GET", "/", [])  # no Host (RFC 9112 3.2: a client must send one)
@example("GET", "/", [(b"Host", b"a"), (b"host", b"b")])
@example("GET", "/", [(b"Content-Type", b"text/plain"), (b"Host", b"h")])  # Host goes first
def test_a_request_head_is_written_as_h11_writes_it_and_refused_where_it_refuses(
    method: str, target: str, headers: list[tuple[bytes, bytes]]
) -> None:
    # Framing headers are checked by the connection (body length), not by the head.
    assume(not any(n.lower() in (b"content-length", b"transfer-encoding") for n, _ in headers))
    try:
        expected = h11_request(method, target, headers)
    except (h11.ProtocolError, UnicodeError):
        with pytest.raises(WireError):
            request_head(method, target, headers)
        return
    assert request_head(method, target, headers) == expected


def head(status: int, *headers: tuple[bytes, bytes], version: bytes = b"1.1") -> ResponseHead:
    return ResponseHead(status, b"", version, list(headers))


@pytest.mark.parametrize(
    ("method", "response", "framing"),
    [
        ("GET", head(200, (b"content-length", b"5")), ("length", 5)),
        ("GET", head(200, (b"content-length", b"0")), ("none", 0)),
        ("GET", head(200, (b"transfer-encoding", b"chunked")), ("chunked", 0)),
        # Both: the transfer coding frames the body (RFC 9112 6.3, point 3).
        (
            "GET",
            head(200, (b"content-length", b"5"), (b"transfer-encoding", b"chunked")),
            ("chunked", 0),
        ),
        ("GET", head(200), ("close", 0)),
        ("HEAD", head(200, (b"content-length", b"5")), ("none", 0)),
        ("HEAD", head(200, (b"transfer-encoding", b"chunked")), ("none", 0)),
        ("GET", head(204, (b"content-length", b"5")), ("none", 0)),
        ("GET", head(304, (b"transfer-encoding", b"chunked")), ("none", 0)),
    ],
)
def test_the_body_is_framed_as_rfc_9112_says(
    method: str, response: ResponseHead, framing: tuple[str, int]
) -> None:
    assert body_framing(method, response) == framing


@pytest.mark.parametrize(
    ("version", "headers", "kept"),
    [
        (b"1.1", [], True),
        (b"1.1", [(b"connection", b"close")], False),
        (b"1.1", [(b"Connection", b"keep-alive, Close")], False),
        (b"1.1", [(b"connection", b"closed")], True),
        (b"1.0", [], False),
        (b"1.0", [(b"connection", b"keep-alive")], False),  # as h11: 1.0 is never kept
    ],
)
def test_a_connection_is_kept_unless_http_1_0_or_close(
    version: bytes, headers: list[tuple[bytes, bytes]], kept: bool
) -> None:
    assert keep_alive(version, headers) is kept
