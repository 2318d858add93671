"""Issue 18, part 1: the proxy's HTTP/1.1 framing, probed as a smuggler would.

Each test sends raw bytes to a proxy in-process and asserts what the client gets and
the exact bytes the upstream receives (a recording upstream that reads requests with
its own strict framing, keeps every byte, and answers ``ok``). Each failed on the code
before the fix: a bare-LF trailer swallowing the next request, folded or spoofed heads
forwarded, lengths copied as sent, unbounded bodies and field counts, 1xx and 204
answers carrying a length, a pooled upstream connection after an ambiguous response,
a chunked body whose bare-LF trailer end never ended the response, and a chunk
extension whose verdict depended on where a read ended.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc
import pytest
from _servers import deadline, start_proxy

# Every case on both HTTP/1.1 engines (--http ssekit|h11): _servers starts the proxy on it.
pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("http_engine")]

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


@dataclass
class Upstream:
    """What a recording upstream received: every byte, per connection, and the closes."""

    url: str = ""
    received: list[bytes] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)
    closed: int = 0

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def forwarded(self, method: bytes, target: bytes, fields: list[bytes], body: bytes) -> bytes:
        """The exact request the proxy must send for a client at 127.0.0.1."""
        head = [b"%s %s HTTP/1.1" % (method, target), b"host: 127.0.0.1:%d" % self.port]
        return b"\r\n".join([*head, *fields, b"", b""]) + body


Answer = Callable[[anyio.abc.SocketStream, bytes], Awaitable[bool]]


async def answer_ok(stream: anyio.abc.SocketStream, request: bytes) -> bool:
    """Answer ``ok`` and keep the connection."""
    await stream.send(OK)
    return True


async def read_message(receive: Callable[[], Awaitable[bytes]], buffer: bytearray) -> bytes:
    """One request from ``buffer`` (reading more as needed), framed strictly: a
    Content-Length, or a chunked body ending in an empty trailer section."""
    while b"\r\n\r\n" not in buffer:
        buffer += await receive()
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end]).lower()
    length = re.search(rb"\r\ncontent-length: (\d+)\r\n", head)
    if b"\r\ntransfer-encoding: chunked\r\n" in head:
        while (last := buffer.find(b"\r\n0\r\n\r\n", end - 2)) < 0:
            buffer += await receive()
        end = last + 7
    elif length:
        end += int(length.group(1))
        while len(buffer) < end:
            buffer += await receive()
    message = bytes(buffer[:end])
    del buffer[:end]
    return message


async def start_recording_upstream(tg: anyio.abc.TaskGroup, answer: Answer = answer_ok) -> Upstream:
    """An upstream that keeps every byte each connection brought (``received``), each
    request it read (``requests``), and counts the connections that ended."""
    upstream = Upstream()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    upstream.url = f"http://127.0.0.1:{listener.extra(anyio.abc.SocketAttribute.local_port)}"

    async def handle(stream: anyio.abc.SocketStream) -> None:
        index = len(upstream.received)
        upstream.received.append(b"")

        async def receive() -> bytes:
            data = await stream.receive()
            upstream.received[index] += data
            return data

        buffer = bytearray()
        async with stream:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                while True:
                    upstream.requests.append(await read_message(receive, buffer))
                    if not await answer(stream, upstream.requests[-1]):
                        break
        upstream.closed += 1

    async def run() -> None:
        try:
            await listener.serve(handle)
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()

    tg.start_soon(run)
    return upstream


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


def read_responses(data: bytes) -> list[Response]:
    """The complete responses at the start of ``data`` (Content-Length or chunked)."""
    out = []
    while (parsed := _one_response(data)) is not None:
        response, data = parsed
        out.append(response)
    return out


def _one_response(data: bytes) -> tuple[Response, bytes] | None:
    head, blank, data = data.partition(b"\r\n\r\n")
    if not blank:
        return None
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    body = b""
    if 200 <= status != 204 and headers.get(b"transfer-encoding") == b"chunked":
        while True:
            size_line, crlf, rest = data.partition(b"\r\n")
            if not crlf:
                return None
            size = int(size_line, 16)
            if len(rest) < size + 2:
                return None
            body, data = body + rest[:size], rest[size + 2 :]
            if size == 0:
                return Response(status, headers, body), data
    elif 200 <= status != 204:
        size = int(headers.get(b"content-length", b"0"))
        if len(data) < size:
            return None
        body, data = data[:size], data[size:]
    return Response(status, headers, body), data


async def send(base: str, *pieces: bytes, count: int = 1, within: float = 3.0) -> bytes:
    """Send ``pieces`` (a pause between them: separate reads at the proxy) on one
    connection; read until ``count`` final responses came, the proxy closed, or
    ``within`` passed."""
    stream = await anyio.connect_tcp("127.0.0.1", port_of(base))
    data = b""
    async with stream:
        for i, piece in enumerate(pieces):
            if i:
                await anyio.sleep(0.05)
            await stream.send(piece)
        with anyio.move_on_after(within):
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                while len([r for r in read_responses(data) if r.status >= 200]) < count:
                    data += await stream.receive()
    return data


def forwarded_fields(host: bytes = b"a") -> list[bytes]:
    """The fields the proxy adds for a client at 127.0.0.1 that sent ``Host: host``."""
    return [
        b"x-forwarded-for: 127.0.0.1",
        b"x-forwarded-proto: http",
        b"x-forwarded-host: " + host,
        b"via: 1.1 ssekit",
    ]


def statuses(data: bytes) -> list[int]:
    return [response.status for response in read_responses(data)]


async def wait_for(condition: Callable[[], bool], seconds: float = 3.0) -> None:
    with anyio.move_on_after(seconds):
        while not condition():
            await anyio.sleep(0.01)


def exchange_logs(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    """The JSON access-log records of logger ssekit.proxy, as fields."""
    lines = []
    for record in caplog.records:
        if record.name == "ssekit.proxy" and record.levelno == logging.INFO:
            with contextlib.suppress(ValueError):
                fields = json.loads(record.getMessage())
                if isinstance(fields, dict) and "outcome" in fields:
                    lines.append(fields)
    return lines


async def metric(base: str, name: str) -> float:
    data = await send(
        base, b"GET /_ssekit/metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    (response,) = read_responses(data)
    for line in response.body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


# -- a. a trailer section ended by a bare LF ends the body; the next request is read -------


@pytest.mark.parametrize("request_buffer", [1 << 20, 0], ids=["buffered", "streamed"])
async def test_a_bare_lf_trailer_ends_the_body_and_the_next_request_is_answered_in_order(
    request_buffer: int,
) -> None:
    post = b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    post += b"5\r\nhello\r\n0\r\nX: y\n\n"
    hidden = b"GET /hidden HTTP/1.1\r\nHost: a\r\n\r\n"
    async with deadline(10) as tg:
        upstream = await start_recording_upstream(tg)
        base = await start_proxy(tg, upstream.url, request_buffer=request_buffer)
        data = await send(base, post + hidden, count=2)
    assert statuses(data) == [200, 200]
    if request_buffer:  # read whole before connecting: sent with its length
        framing, body = b"content-length: 5", b"hello"
    else:  # streamed: chunked on our own hop too
        framing, body = b"transfer-encoding: chunked", b"5\r\nhello\r\n0\r\n\r\n"
    assert upstream.received == [
        upstream.forwarded(b"POST", b"/a", [*forwarded_fields(), framing], body)
        + upstream.forwarded(b"GET", b"/hidden", forwarded_fields(), b"")
    ]


# -- b. a trailer line that is no valid field, or a framing field, is a 400 ---------------


@pytest.mark.parametrize("request_buffer", [1 << 20, 0], ids=["buffered", "streamed"])
@pytest.mark.parametrize("trailer", [b"Transfer-Encoding: x", b"junk\x00", b"Content-Length: 5"])
async def test_a_bad_trailer_line_is_a_400_and_no_complete_request_goes_upstream(
    trailer: bytes, request_buffer: int
) -> None:
    head = b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"5\r\nhello\r\n0\r\n" + trailer + b"\r\n\r\n"
    after = b"GET /hidden HTTP/1.1\r\nHost: a\r\n\r\n"
    async with deadline(10) as tg:
        upstream = await start_recording_upstream(tg)
        base = await start_proxy(tg, upstream.url, request_buffer=request_buffer)
        data = await send(base, head + body + after, count=2)
        await wait_for(lambda: upstream.closed == len(upstream.received))
    assert statuses(data) == [400]  # and the connection closed: /hidden never read
    assert upstream.requests == []
    if request_buffer:  # the body was refused before any connection was opened
        assert upstream.received == []
        return
    # Streamed: the head may have gone; never the end of the body, and the upstream
    # connection was closed.
    (received,) = upstream.received
    expected = upstream.forwarded(
        b"POST", b"/a", [*forwarded_fields(), b"transfer-encoding: chunked"], b""
    )
    assert received.startswith(expected)
    assert received[len(expected) :] in (b"", b"5\r\nhello\r\n")
    assert upstream.closed == 1


async def test_a_trailer_section_past_the_header_size_limit_is_refused() -> None:
    head = b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    lines = [b"X-T%d: %s\r\n" % (i, b"v" * 100) for i in range(20)]  # 106-107 bytes each
    async with deadline(10) as tg:
        upstream = await start_recording_upstream(tg)
        base = await start_proxy(tg, upstream.url, max_header_size=2048)
        refused = await send(base, head + b"1\r\nx\r\n0\r\n" + b"".join(lines) + b"\r\n")
        accepted = await send(base, head + b"1\r\nx\r\n0\r\n" + b"".join(lines[:15]) + b"\r\n")
    assert statuses(refused) == [431]
    assert statuses(accepted) == [200]
    assert len(upstream.requests) == 1


# -- c. obsolete line folding in a request head ------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n",
    ],
    ids=["folded-transfer-encoding", "folded-field"],
)
async def test_an_obsolete_line_fold_in_a_request_head_is_a_400_and_nothing_goes_upstream(
    head: bytes,
) -> None:
    async with deadline(10) as tg:
        upstream = await start_recording_upstream(tg)
        base = await start_proxy(tg, upstream.url)
        data = await send(base, head)
    assert statuses(data) == [400]
    assert upstream.received == []


# -- d. the proxy writes the lengths it sends --------------------------------------------


async def test_a_content_length_with_leading_zeros_goes_upstream_as_the_proxys_own_decimal() -> (
    None
):
    request = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 0010\r\n\r\n0123456789"
    async with deadline(10) as tg:
        upstream = await start_recording_upstream(tg)
        base = await start_proxy(tg, upstream.url)
        data = await send(base, request)
    assert statuses(data) == [200]
    assert upstream.received == [
        upstream.forwarded(
            b"POST", b"/a", [b"content-length: 10", *forwarded_fields()], b"0123456789"
        )
    ]


async def test_an_upstream_content_length_with_leading_zeros_reaches_the_client_rewritten() -> None:
    async def padded(stream: anyio.abc.SocketStream, request: bytes) -> bool:
        await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 002\r\n\r\nok")
        return True

    async with deadline(10) as tg:
        upstream = await start_recording_upstream(tg, padded)
        base = await start_proxy(tg, upstream.url)
        data = await send(base, b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    (response,) = read_responses(data)
    assert (response.status, response.headers[b"content-length"], response.body) == (
        200,
        b"2",
        b"ok",
    )


# -- e. a body limit: --max-body-size ----------------------------------------------------


async def test_a_declared_length_past_the_body_limit_is_a_413_at_once_and_nothing_forwarded() -> (
    None
):
    huge = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551621\r\n\r\n"
    over = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n"
    at = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000
    async with deadline(10) as tg:
        upstream = await start_recording_upstream(tg)
        base = await start_proxy(tg, upstream.url, max_body_size=1000)
        default = await start_proxy(tg, upstream.url)
        started = time.monotonic()
        refused = [await send(base, huge), await send(base, over), await send(default, huge)]
        took = time.monotonic() - started
        allowed = await send(base, at)
    assert [statuses(data) for data in refused] == [[413], [413], [413]]
    assert took < 2  # at once, not after a body timeout
    assert statuses(allowed) == [200]
    assert upstream.requests == [
        upstream.forwarded(
            b"POST", b"/a", [b"content-length: 1000", *forwarded_fields()], b"x" * 1000
        )
    ]


@pytest.mark.parametrize("request_buffer", [1 << 20, 0], ids=["buffered", "streamed"])
async def test_a_chunked_body_passing_the_body_limit_is_a_413_and_its_upstream_closed(
    request_buffer: int,
) -> None:
    head = b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with deadline(10) as tg:
        upstream = await start_recording_upstream(tg)
        base = await start_proxy(
            tg, upstream.url, max_body_size=1000, request_buffer=request_buffer
        )
        data = await send(base, head + b"200\r\n" + b"x" * 512 + b"\r\n", b"200\r\n" + b"y" * 512)
        await wait_for(lambda: upstream.closed == len(upstream.received))
    assert statuses(data) == [413]
    assert upstream.requests == []
    if request_buffer:  # refused while buffering: no connection was opened
        assert upstream.received == []
        return
    assert upstream.closed == 1
    (received,) = upstream.received
    assert b"y" not in received  # the piece past the limit never went


async def test_a_body_limit_of_zero_is_none() -> None:
    request = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 70000\r\n\r\n" + b"z" * 70000
    async with deadline(10) as tg:
        upstream = await start_recording_upstream(tg)
        base = await start_proxy(tg, upstream.url, max_body_size=0)
        data = await send(base, request)
    assert statuses(data) == [200]
    assert upstream.requests[0].endswith(b"\r\n\r\n" + b"z" * 70000)


# -- f. Host must be uri-host [":" port] ------------------------------------------------


@pytest.mark.parametrize(
    "host", [b"user@evil.example", b"a b", b"a/b", b"a:b", b"[::1", b"a%zz", b"a\x80"]
)
async def test_a_host_that_is_not_host_and_port_is_a_400_and_nothing_goes_upstream(
    host: bytes,
) -> None:
    async with deadline(10) as tg:
        upstream = await start_recording_upstream(tg)
        base = await start_proxy(tg, upstream.url)
        data = await send(base, b"GET /a HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert statuses(data) == [400]
    assert upstream.received == []


@pytest.mark.parametrize(
    "host", [b"example.com:8080", b"[::1]:8080", b"127.0.0.1", b"a-b.c_d~e", b"xn--d1a%41:"]
)
async def test_a_valid_host_reaches_the_upstream_as_x_forwarded_host(host: bytes) -> None:
    async with deadline(10) as tg:
        upstream = await start_recording_upstream(tg)
        base = await start_proxy(tg, upstream.url)
        data = await send(base, b"GET /a HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert statuses(data) == [200]
    assert upstream.received == [upstream.forwarded(b"GET", b"/a", forwarded_fields(host), b"")]


# -- g. header names with "_" are dropped and counted ----------------------------------


@pytest.mark.parametrize("allowed", [False, True])
async def test_a_header_name_with_an_underscore_is_dropped_and_counted_unless_allowed(
    caplog: pytest.LogCaptureFixture, allowed: bool
) -> None:
    caplog.set_level(logging.INFO, logger="ssekit.proxy")
    request = b"GET /a HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 6.6.6.6\r\nX-Ok: 1\r\n\r\n"
    async with deadline(10) as tg:
        upstream = await start_recording_upstream(tg)
        base = await start_proxy(
            tg, upstream.url, underscores_in_headers=allowed, log_format="json"
        )
        data = await send(base, request)
        dropped = await metric(base, "ssekit_dropped_headers_total")
    assert statuses(data) == [200]
    kept = [b"x_forwarded_for: 6.6.6.6"] if allowed else []
    assert upstream.received == [
        upstream.forwarded(b"GET", b"/a", [*kept, b"x-ok: 1", *forwarded_fields()], b"")
    ]
    assert dropped == (0 if allowed else 1)
    (line,) = [line for line in exchange_logs(caplog) if line["path"] == "/a"]
    assert line.get("dropped_headers", 0) == (0 if allowed else 1)


# -- h. no Content-Length on 1xx or 204 answers to clients ------------------------------


async def test_a_204_or_103_with_a_content_length_reaches_the_client_without_it() -> None:
    async def answers(stream: anyio.abc.SocketStream, request: bytes) -> bool:
        if request.startswith(b"GET /early "):
            await stream.send(
                b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\ncontent-length: 7\r\n\r\n"
            )
            await stream.send(OK)
        else:
            await stream.send(b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n")
        return True

    async with deadline(10) as tg:
        upstream = await start_recording_upstream(tg, answers)
        base = await start_proxy(tg, upstream.url)
        data = await send(
            base,
            b"GET /empty HTTP/1.1\r\nHost: a\r\n\r\nGET /early HTTP/1.1\r\nHost: a\r\n\r\n",
            count=2,
        )
    responses = read_responses(data)
    assert [r.status for r in responses] == [204, 103, 200]
    assert [b"content-length" in r.headers for r in responses] == [False, False, True]
    assert responses[1].headers[b"link"] == b"</a>"
    assert responses[2].body == b"ok"
    assert len(upstream.received) == 1  # the connection went on, both sides


# -- i. a response with both Content-Length and Transfer-Encoding closes its upstream ----


async def test_a_response_with_both_length_and_coding_is_read_chunked_and_its_upstream_closed() -> (
    None
):
    async def ambiguous(stream: anyio.abc.SocketStream, request: bytes) -> bool:
        await stream.send(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
        )
        return True

    async with deadline(10) as tg:
        upstream = await start_recording_upstream(tg, ambiguous)
        base = await start_proxy(tg, upstream.url)
        first = await send(base, b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
        await wait_for(lambda: upstream.closed == 1)
        second = await send(base, b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [r.body for r in read_responses(first) + read_responses(second)] == [b"hello"] * 2
    assert upstream.closed >= 1
    assert upstream.received == [
        upstream.forwarded(b"GET", path, forwarded_fields(), b"") for path in (b"/a", b"/b")
    ]  # one connection each: the first was not pooled


# -- j. a chunked response whose trailer section ends in a bare LF ends at once ----------


async def test_a_chunked_response_ending_in_a_bare_lf_trailer_end_ends_at_once() -> None:
    async def bare_lf(stream: anyio.abc.SocketStream, request: bytes) -> bool:
        await stream.send(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\nb\r\ndata: one\n\n\r\n0\r\n\n"
        )
        return True

    async with deadline(10) as tg:
        upstream = await start_recording_upstream(tg, bare_lf)
        base = await start_proxy(tg, upstream.url, idle_timeout=30)
        started = time.monotonic()
        data = await send(base, b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n", within=5)
        took = time.monotonic() - started
    (response,) = read_responses(data)
    assert (response.status, response.body) == (200, b"data: one\n\n")
    assert took < 2


# -- k. a bound on the number of header lines ------------------------------------------


@pytest.mark.parametrize(("lines", "status"), [(7000, 431), (101, 431), (100, 200)])
async def test_a_head_with_too_many_header_lines_is_a_431_and_nothing_goes_upstream(
    lines: int, status: int
) -> None:
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(lines - 1))
    request = b"GET /a HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n"
    async with deadline(10) as tg:
        upstream = await start_recording_upstream(tg)
        base = await start_proxy(tg, upstream.url, max_header_size=1 << 20)
        data = await send(base, request)
    assert statuses(data) == [status]
    assert len(upstream.requests) == (status == 200)


# -- l. one verdict for a chunk extension, however it is split ---------------------------


@pytest.mark.parametrize("split", [None, 20, 5000, 10_000])
async def test_a_long_chunk_extension_gets_one_verdict_however_the_reads_split_it(
    split: int | None, http_engine: str
) -> None:
    """ssekit's engine bounds a chunk-size line at 4 KiB (400); h11 reads any up to its
    head limit (the body is forwarded). Each engine gives every split one verdict."""
    head = b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"5;ext=" + b"e" * 10_000 + b"\r\nhello\r\n0\r\n\r\n"
    pieces = [head + body] if split is None else [head + body[:split], body[split:]]
    async with deadline(10) as tg:
        upstream = await start_recording_upstream(tg)
        base = await start_proxy(tg, upstream.url)
        data = await send(base, *pieces)
    if http_engine == "h11":
        assert statuses(data) == [200]
        assert upstream.requests[0].endswith(b"\r\n\r\nhello")
    else:
        assert statuses(data) == [400]
        assert upstream.requests == []


# -- issue 20, 9: a slow request body holds no upstream connection ------------------------


async def test_a_request_body_sent_slowly_opens_no_upstream_connection_until_it_is_whole() -> None:
    head = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n"
    async with deadline(10) as tg:
        upstream = await start_recording_upstream(tg)
        base = await start_proxy(tg, upstream.url)
        stream = await anyio.connect_tcp("127.0.0.1", port_of(base))
        async with stream:
            await stream.send(head + b"01234")
            await anyio.sleep(0.3)
            while_dripping = len(upstream.received)
            await stream.send(b"56789")
            data = b""
            with anyio.move_on_after(3):
                while not read_responses(data):
                    data += await stream.receive()
    assert while_dripping == 0
    assert statuses(data) == [200]
    assert upstream.received == [
        upstream.forwarded(
            b"POST", b"/a", [b"content-length: 10", *forwarded_fields()], b"0123456789"
        )
    ]


async def test_a_body_larger_than_the_request_buffer_streams_on_from_the_buffer() -> None:
    head = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3000\r\n\r\n"
    async with deadline(10) as tg:
        upstream = await start_recording_upstream(tg)
        base = await start_proxy(tg, upstream.url, request_buffer=1000)
        stream = await anyio.connect_tcp("127.0.0.1", port_of(base))
        async with stream:
            await stream.send(head + b"a" * 2000)
            await wait_for(lambda: len(upstream.received) == 1 and len(upstream.received[0]) > 2000)
            connected_early = list(upstream.received)
            await stream.send(b"b" * 1000)
            data = b""
            with anyio.move_on_after(3):
                while not read_responses(data):
                    data += await stream.receive()
    expected_head = upstream.forwarded(
        b"POST", b"/a", [b"content-length: 3000", *forwarded_fields()], b""
    )
    assert connected_early == [expected_head + b"a" * 2000]  # streaming before the end
    assert statuses(data) == [200]
    assert upstream.received == [expected_head + b"a" * 2000 + b"b" * 1000]
