"""Issue 7, section 2: the proxy probed as an attacker and an unlucky operator would.

Black-box over loopback: raw sockets where a well-behaved client library would
hide the fault, scripted upstreams from ``_servers`` (or the rawer one below,
which never assumes the proxy sends a whole request), and the proxy in-process.
Each test states what the client, the upstream or the operator (logs, metrics)
must observe; each failed on the code before the hardening.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import resource
import select
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import httpx
import pytest
from _servers import (
    LAST_CHUNK,
    SSE_HEAD,
    Seen,
    chunk,
    deadline,
    parse_chunked,
    proxy_config,
    start_mock,
    start_proxy,
    start_upstream,
    wait_closed,
)

import ssekit
from ssekit.proxy import serve

# Every test on both HTTP/1.1 engines: the proxy and mock _servers starts run on it.
pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("http_engine")]
CHAT = {"model": "ssekit-mock", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
OK_CLOSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"


# -- helpers ----------------------------------------------------------------


class Peer:
    """The upstream's side of one connection, read as raw bytes (nothing assumed)."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def head(self) -> bytes:
        """One request head (without the blank line); raises EndOfStream at EOF."""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += await self.stream.receive()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return head

    async def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self.buffer += await self.stream.receive()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    async def until_closed(self, seen: Seen) -> None:
        """Read (and keep) everything until the proxy closes; record when."""
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            while True:
                self.buffer += await self.stream.receive()
        seen.closed_at.append(time.monotonic())


async def start_raw_upstream(
    tg: anyio.abc.TaskGroup, script: Callable[[Peer, Seen], Awaitable[None]]
) -> tuple[str, Seen]:
    """An upstream whose script sees each connection raw; a peer's EOF never fails the test."""
    seen = Seen()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        seen.connections += 1
        async with stream:
            with contextlib.suppress(
                anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError
            ):
                await script(Peer(stream), seen)

    async def run() -> None:
        try:
            await listener.serve(handle)
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()

    tg.start_soon(run)
    return f"http://127.0.0.1:{port}", seen


async def silent_upstream(peer: Peer, seen: Seen) -> None:
    """Record the request head, never answer, note when the proxy hangs up."""
    seen.requests.append(await peer.head())
    await peer.until_closed(seen)


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


async def read_all(stream: anyio.abc.ByteReceiveStream, within: float) -> bytes:
    """Everything until EOF or a reset, or what came within ``within`` seconds."""
    data = bytearray()
    with anyio.move_on_after(within):
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            while True:
                data += await stream.receive()
    return bytes(data)


async def exchange(
    base: str, request: bytes, *, within: float = 3.0, half_close: bool = False
) -> bytes:
    """Send raw bytes; return what the proxy sent back until it closed (or ``within`` passed).

    ``half_close`` shuts our sending side after the request (EOF mid-body) while
    we keep reading.
    """
    stream = await anyio.connect_tcp("127.0.0.1", port_of(base))
    async with stream:
        await stream.send(request)
        if half_close:
            await stream.send_eof()
        return await read_all(stream, within)


def status_of(response: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", response)
    return int(match.group(1)) if match else None


def dechunk(body: bytes) -> tuple[list[bytes], bool]:
    """Like ``parse_chunked`` but linear in the body size (for multi-MB bodies)."""
    chunks: list[bytes] = []
    view = memoryview(body)
    pos = 0
    while True:
        end = body.find(b"\r\n", pos)
        if end < 0:
            return chunks, False
        size = int(body[pos:end].split(b";")[0], 16)
        if size == 0:
            return chunks, body[end + 2 : end + 4] == b"\r\n"
        start = end + 2
        chunks.append(bytes(view[start : start + size]))
        if len(body) < start + size + 2:
            return chunks, False
        pos = start + size + 2


async def get_metrics(base: str, token: str | None = None) -> dict[str, float]:
    """GET /_ssekit/metrics, parsed: series name with labels -> value."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient() as client:
        response = await client.get(base + "/_ssekit/metrics", headers=headers)
    assert response.status_code == 200, response.text
    series: dict[str, float] = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            series[name] = float(value)
    return series


def outcomes(metrics: dict[str, float]) -> dict[str, float]:
    """``ssekit_streams_total`` by outcome, zeros left out."""
    found = {}
    for name, value in metrics.items():
        match = re.fullmatch(r'ssekit_streams_total\{outcome="(\w+)"\}', name)
        if match and value:
            found[match.group(1)] = value
    return found


def exchange_logs(caplog: pytest.LogCaptureFixture, *, admin: bool = False) -> list[dict[str, Any]]:
    """The JSON log lines of logger ssekit.proxy (one per exchange); admin ones left out."""
    lines = []
    for record in caplog.records:
        if record.name != "ssekit.proxy" or record.levelno != logging.INFO:
            continue
        with contextlib.suppress(ValueError):
            fields = json.loads(record.getMessage())
            if isinstance(fields, dict) and "outcome" in fields:
                if admin or not str(fields.get("path", "")).startswith("/_ssekit/"):
                    lines.append(fields)
    return lines


async def wait_for(condition: Callable[[], bool], seconds: float = 3.0) -> None:
    """Poll until ``condition`` holds or ``seconds`` pass; the assertions after it judge."""
    with anyio.move_on_after(seconds):
        while not condition():
            await anyio.sleep(0.01)


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# -- process and resources: pipelined bytes ------------------------------------


def push_pipelined_bytes(port: int, total: int, seconds: float) -> int:
    """Start a request, then push a pipelined request of ``total`` bytes for ``seconds``.

    Returns how many bytes the kernel accepted from us: our small send buffer,
    the proxy's receive buffer, and whatever the proxy read from it.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=3)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200 "), head
        sock.setblocking(False)
        pipelined = b"POST /next HTTP/1.1\r\nHost: x\r\ncontent-length: %d\r\n\r\n" % total
        block = b"x" * 65536
        sent = 0
        pending = pipelined
        stop = time.monotonic() + seconds
        while sent < total and (left := stop - time.monotonic()) > 0:
            _, writable, _ = select.select([], [sock], [], left)
            if not writable:
                continue
            try:
                n = sock.send(pending or block)
            except BlockingIOError:
                continue
            except OSError:
                break  # the proxy hung up on us: it certainly stopped reading
            sent += n
            pending = pending[n:]
            with contextlib.suppress(BlockingIOError, OSError):
                sock.recv(65536)  # keep the response flowing
        return sent
    finally:
        sock.close()


async def test_pipelined_bytes_sent_during_a_stream_are_not_read_without_bound() -> None:
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD)
        for i in range(100):  # a slow stream: ten seconds, longer than the push
            await stream.send(chunk(b"data: %d\n\n" % i))
            await anyio.sleep(0.1)
        await stream.send(LAST_CHUNK)

    async with deadline(15) as tg:
        upstream, _ = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream)
        accepted = await anyio.to_thread.run_sync(
            push_pipelined_bytes, port_of(base), 64 * 1024 * 1024, 2.0
        )
    # Kernel buffers on the client->proxy hop hold a few MB; everything past that
    # was read by the proxy into memory. It must stop reading well before 64 MiB.
    assert accepted < 16 * 1024 * 1024, f"the proxy took {accepted / 2**20:.1f} MiB"


# -- process and resources: request body idle timeout --------------------------


async def trickle(stream: anyio.abc.SocketStream, every: float) -> None:
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        while True:
            await anyio.sleep(every)
            await stream.send(b"a")


@pytest.mark.parametrize(
    ("request_bytes", "trickle_every"),
    [
        pytest.param(
            b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
            None,
            id="content-length-and-no-body",
        ),
        pytest.param(
            b"POST /v1/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n",
            1.0,
            id="chunked-one-byte-a-second",
        ),
        pytest.param(
            b"POST /v1/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffff\r\nabc",
            None,
            id="huge-chunk-size-few-bytes",
        ),
    ],
)
@pytest.mark.parametrize("request_buffer", [1 << 20, 0], ids=["buffered", "streamed"])
async def test_a_stalled_request_body_gets_408_and_frees_the_upstream_connection(
    request_bytes: bytes, trickle_every: float | None, request_buffer: int
) -> None:
    async with deadline(10) as tg:
        upstream, seen = await start_raw_upstream(tg, silent_upstream)
        base = await start_proxy(tg, upstream, body_timeout=0.5, request_buffer=request_buffer)
        client = await anyio.connect_tcp("127.0.0.1", port_of(base))
        async with client:
            await client.send(request_bytes)
            started = time.monotonic()
            if trickle_every is not None:
                tg.start_soon(trickle, client, trickle_every)
            response = await read_all(client, within=3.0)
            took = time.monotonic() - started
        with anyio.move_on_after(2):
            while not seen.closed_at and not request_buffer:
                await anyio.sleep(0.01)
    # Nothing of the response went to the client yet: the answer is a 408 (JSON).
    assert status_of(response) == 408, response[:300]
    assert b"application/json" in response.lower()
    assert 0.4 <= took < 3.0
    if request_buffer:  # the body is read before connecting: no connection was opened
        assert seen.connections == 0
    else:
        assert seen.closed_at, "the upstream connection was never closed"


async def never_reading_upstream(peer: Peer, seen: Seen) -> None:
    """Take the request head, then read nothing more (the body backs up), never answer."""
    seen.requests.append(await peer.head())
    await anyio.sleep(30)


async def test_an_upstream_that_stops_reading_the_request_body_gets_504_not_a_hang() -> None:
    # The client keeps sending; the upstream takes nothing: once the proxy's writes stall
    # for --first-byte-timeout, the client gets a 504 instead of waiting forever.
    size = 64 * 1024 * 1024
    async with deadline(20) as tg:
        upstream, _ = await start_raw_upstream(tg, never_reading_upstream)
        base = await start_proxy(tg, upstream, first_byte_timeout=0.5, body_timeout=30)
        client = await anyio.connect_tcp("127.0.0.1", port_of(base))
        async with client:
            await client.send(
                b"POST /v1/upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size
            )

            async def feed() -> None:
                piece = b"x" * 65536
                with contextlib.suppress(
                    anyio.BrokenResourceError, anyio.ClosedResourceError, OSError
                ):
                    for _ in range(size // len(piece)):
                        await client.send(piece)

            tg.start_soon(feed)
            started = time.monotonic()
            response = await read_all(client, within=10.0)
            took = time.monotonic() - started
    assert status_of(response) == 504, response[:300]
    error = json.loads(response.partition(b"\r\n\r\n")[2])["error"]
    assert (error["code"], error["type"]) == (504, "proxy_error")
    assert took < 8.0


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
async def test_a_client_that_takes_nothing_is_cut_after_the_send_timeout(
    caplog: pytest.LogCaptureFixture, framing: str
) -> None:
    # The client asks for a stream, then never reads: once the proxy's writes have waited
    # --send-timeout, the client is cut and the upstream closed (nothing held forever).
    caplog.set_level(logging.INFO, logger="ssekit.proxy")
    piece = b"data: " + b"z" * 65_000 + b"\n\n"

    async def endless(peer: Peer, seen: Seen) -> None:
        seen.requests.append(await peer.head())
        framed = framing == "chunked"
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        head += (
            b"transfer-encoding: chunked\r\n\r\n"
            if framed
            else b"content-length: 1000000000000\r\n\r\n"
        )
        try:
            await peer.stream.send(head)
            for _ in range(100_000):
                await peer.stream.send(chunk(piece) if framed else piece)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            seen.closed_at.append(time.monotonic())

    async with deadline(20) as tg:
        upstream, seen = await start_raw_upstream(tg, endless)
        base = await start_proxy(tg, upstream, send_timeout=0.5, log_format="json")
        client = await anyio.connect_tcp("127.0.0.1", port_of(base))
        async with client:
            client.extra(anyio.abc.SocketAttribute.raw_socket).setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024
            )
            await client.send(b"GET /v1/stream HTTP/1.1\r\nHost: x\r\n\r\n")
            await wait_for(lambda: bool(seen.closed_at), seconds=10)
            await wait_for(lambda: len(exchange_logs(caplog)) == 1)
    assert seen.closed_at, "the upstream was held: the stalled client was never cut"
    [line] = exchange_logs(caplog)
    assert line["outcome"] == "client_disconnect"
    assert line["error"]  # the cut is explained, not a plain departure


# -- framing and blame: malformed request bodies -------------------------------

MALFORMED_BODIES = [
    pytest.param(
        b"POST /v1/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        False,
        id="bad-chunk-size",
    ),
    pytest.param(
        b"POST /v1/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"ffffffffffffffffffffffff\r\n",
        False,
        id="overflowing-chunk-size",
    ),
    pytest.param(
        b"POST /v1/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello world\r\n0\r\n\r\n",
        False,
        id="chunk-longer-than-declared",
    ),
    pytest.param(
        b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
        True,
        id="eof-mid-content-length-body",
    ),
    pytest.param(
        b"POST /v1/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        True,
        id="eof-mid-chunk",
    ),
]


@pytest.mark.parametrize(("request_bytes", "half_close"), MALFORMED_BODIES)
async def test_a_malformed_request_body_is_the_clients_fault_400_not_502(
    caplog: pytest.LogCaptureFixture, request_bytes: bytes, half_close: bool
) -> None:
    caplog.set_level(logging.INFO, logger="ssekit.proxy")
    async with deadline(10) as tg:
        upstream, seen = await start_raw_upstream(tg, silent_upstream)
        base = await start_proxy(tg, upstream, log_format="json")
        response = await exchange(base, request_bytes, half_close=half_close)
        metrics = await get_metrics(base)
        with anyio.move_on_after(2):
            while len(seen.closed_at) < seen.connections:
                await anyio.sleep(0.01)
    assert status_of(response) == 400, response[:300]
    # Whatever reached the upstream of this body, that connection is not reused.
    assert len(seen.closed_at) == seen.connections
    assert outcomes(metrics).get("bad_request") == 1, outcomes(metrics)
    assert "upstream_error" not in outcomes(metrics)
    assert metrics.get('ssekit_requests_total{status="502"}', 0) == 0
    # One exchange: one log line, saying what the client saw.
    assert [(line["status"], line["outcome"]) for line in exchange_logs(caplog)] == [
        (400, "bad_request")
    ]


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(
            b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            id="content-length-not-a-number",
        ),
        pytest.param(
            b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 3\r\n\r\nab",
            id="content-length-two-values",
        ),
        pytest.param(
            b"POST /v1/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nab",
            id="transfer-encoding-not-chunked",
        ),
    ],
)
async def test_a_request_head_that_shows_bad_framing_sends_nothing_upstream(
    request_bytes: bytes,
) -> None:
    # Regression guard: these already pass before the hardening (h11 refuses the head).
    async with deadline(10) as tg:
        upstream, seen = await start_raw_upstream(tg, silent_upstream)
        base = await start_proxy(tg, upstream)
        response = await exchange(base, request_bytes)
    assert status_of(response) in (400, 501), response[:300]
    assert seen.connections == 0


# -- framing and blame: versions and lengths ------------------------------------


async def answer_ok(stream: anyio.abc.SocketStream, seen: Seen) -> None:
    await stream.send(OK_CLOSE)


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/9.9"])
async def test_another_major_http_version_gets_505_and_nothing_goes_upstream(
    version: bytes,
) -> None:
    async with deadline(10) as tg:
        upstream, seen = await start_upstream(tg, answer_ok)
        base = await start_proxy(tg, upstream)
        response = await exchange(base, b"GET /v1/models " + version + b"\r\nHost: x\r\n\r\n")
    assert status_of(response) == 505, response[:300]
    assert seen.connections == 0


async def test_a_higher_minor_version_is_served_as_http_1_1() -> None:
    # RFC 9110 2.5. Regression guard: already served before the hardening.
    async with deadline(10) as tg:
        upstream, seen = await start_upstream(tg, answer_ok)
        base = await start_proxy(tg, upstream)
        response = await exchange(
            base, b"GET /v1/models HTTP/1.2\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    assert response.startswith(b"HTTP/1.1 200 "), response[:300]
    assert response.endswith(b"ok")
    assert seen.requests[0].startswith(b"GET /v1/models HTTP/1.1\r\n")


async def test_an_event_stream_to_a_higher_minor_version_keeps_its_chunks() -> None:
    """An HTTP/1.2 client is served as 1.1: chunked, one chunk per upstream chunk."""

    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD + chunk(b"data: 1\n\n") + chunk(b"data: 2\n\n"))
        await anyio.sleep(0.05)
        await stream.send(chunk(b"data: 3\n\n") + LAST_CHUNK)

    async with deadline(10) as tg:
        upstream, _ = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream)
        response = await exchange(base, b"GET / HTTP/1.2\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding: chunked" in head.lower()
    assert parse_chunked(body) == ([b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"], True)


async def test_http_1_0_with_transfer_encoding_is_bad_framing_and_nothing_goes_upstream() -> None:
    # RFC 9112 6.1: a server receiving Transfer-Encoding in an HTTP/1.0 message
    # must treat the framing as faulty.
    async with deadline(10) as tg:
        upstream, seen = await start_upstream(tg, answer_ok)
        base = await start_proxy(tg, upstream)
        response = await exchange(
            base,
            b"POST /v1/x HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n",
        )
    assert status_of(response) == 400, response[:300]
    assert seen.connections == 0


async def test_a_content_length_too_large_to_be_real_gets_400_and_nothing_goes_upstream() -> None:
    # Regression guard: h11 already refuses this head before the hardening.
    async with deadline(10) as tg:
        upstream, seen = await start_upstream(tg, answer_ok)
        base = await start_proxy(tg, upstream)
        response = await exchange(
            base,
            b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        )
    assert status_of(response) == 400, response[:300]
    assert seen.connections == 0


# -- framing and blame: Expect: 100-continue -------------------------------------


@pytest.mark.parametrize("upstream_sends_100", [False, True])
async def test_expect_100_continue_client_gets_the_100_then_the_answer(
    upstream_sends_100: bool,
) -> None:
    async def script(peer: Peer, seen: Seen) -> None:
        seen.requests.append(await peer.head())
        if upstream_sends_100:
            await peer.stream.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        seen.requests.append(await peer.exactly(5))
        await peer.stream.send(OK_CLOSE)

    async with deadline(10) as tg:
        upstream, seen = await start_raw_upstream(tg, script)
        base = await start_proxy(tg, upstream)
        client = await anyio.connect_tcp("127.0.0.1", port_of(base))
        async with client:
            await client.send(
                b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
            )
            interim = b""
            with anyio.move_on_after(1.0):  # as curl does, wait a second for the 100
                while b"\r\n\r\n" not in interim:
                    interim += await client.receive()
            await client.send(b"hello")
            rest = interim + await read_all(client, within=3.0)
    assert interim.startswith(b"HTTP/1.1 100 "), f"no 100 within 1 s: {interim!r}"
    while rest.startswith(b"HTTP/1.1 1"):  # any number of 1xx, then the final answer
        rest = rest.partition(b"\r\n\r\n")[2]
    assert rest.startswith(b"HTTP/1.1 200 "), rest[:300]
    assert rest.endswith(b"\r\n\r\nok")
    assert seen.requests[1] == b"hello"


# -- framing and blame: upstream response framing --------------------------------


@pytest.mark.parametrize("content_length", [5, 1000])
async def test_upstream_content_length_with_chunked_is_dropped_and_the_body_read_chunked(
    content_length: int,
) -> None:
    pieces = [b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n"]

    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"content-length: %d\r\ntransfer-encoding: chunked\r\n\r\n" % content_length
        )
        for piece in pieces:
            await stream.send(chunk(piece))
            await anyio.sleep(0.005)
        await stream.send(LAST_CHUNK)

    async with deadline(10) as tg:
        upstream, _ = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream)
        response = await exchange(base, b"GET /s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        metrics = await get_metrics(base)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert b"\r\ncontent-length:" not in head.lower()  # RFC 9112 6.3: TE overrides CL
    chunks, complete = dechunk(body)
    assert complete, body
    assert b"".join(chunks) == b"".join(pieces)
    assert outcomes(metrics) == {"complete": 1}


READ_TO_CLOSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
)


@pytest.mark.parametrize("error_event", [False, True])
@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b"data: tw", id="mid-line"),
        # A complete field line, but the blank line that dispatches the event never
        # came: per the spec the client drops the event. Inserting "event: error"
        # here would merge into that event (and a blank line first would dispatch
        # a truncated one as if whole), so the only honest signal is the cut.
        pytest.param(b"data: two\n", id="after-a-field-line-without-the-blank-line"),
        pytest.param(b"data: two\r\nid: 2\r\n", id="crlf-fields-without-the-blank-line"),
    ],
)
async def test_a_read_to_close_upstream_body_ending_mid_event_is_a_cut_not_a_clean_end(
    tail: bytes, error_event: bool
) -> None:
    upstream_body = b"data: one\n\n" + tail

    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(READ_TO_CLOSE_HEAD + b"data: one\n\n")
        await anyio.sleep(0.05)
        await stream.send(tail)
        await anyio.sleep(0.05)
        # ...and close: no length, so only the event stream itself shows the cut.

    async with deadline(10) as tg:
        upstream, _ = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream, error_event=error_event)
        response = await exchange(base, b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        cut_seen = False
        async with httpx.AsyncClient() as client:
            try:
                async with client.stream("GET", base + "/s") as streamed:
                    async for data in streamed.aiter_bytes():
                        received += data
            except httpx.RemoteProtocolError:
                cut_seen = True
        metrics = await get_metrics(base)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    chunks, complete = dechunk(body)
    assert not complete, "a cut stream ended with the last-chunk, as if complete"
    assert cut_seen, "httpx saw a complete response"
    # Stopped inside an event: nothing may be inserted, with or without --error-event.
    assert b"".join(chunks) == upstream_body
    assert received == upstream_body
    assert outcomes(metrics) == {"upstream_cut": 2}, outcomes(metrics)


@pytest.mark.parametrize("error_event", [False, True])
async def test_a_read_to_close_upstream_body_ending_at_an_event_boundary_is_a_clean_end(
    error_event: bool,
) -> None:
    # Regression guard (passes before the hardening): an event stream may end
    # between events, and read-to-close has no other end marker.
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(READ_TO_CLOSE_HEAD + b"data: one\n\n")
        await anyio.sleep(0.05)
        await stream.send(b"data: [DONE]\n\n")

    async with deadline(10) as tg:
        upstream, _ = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream, error_event=error_event)
        async with httpx.AsyncClient() as client:
            response = await client.get(base + "/s")
        metrics = await get_metrics(base)
    assert response.content == b"data: one\n\ndata: [DONE]\n\n"
    assert outcomes(metrics) == {"complete": 1}


async def test_a_read_to_close_upstream_stalling_at_a_boundary_gets_the_error_event() -> None:
    # Regression guard (passes before the hardening): --error-event fires for a
    # read-to-close body as for a chunked one, where a boundary makes it honest.
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(READ_TO_CLOSE_HEAD + b"data: one\n\n")
        await wait_closed(stream, seen)

    async with deadline(10) as tg:
        upstream, _ = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream, error_event=True, idle_timeout=0.3)
        response = await exchange(base, b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
    chunks, complete = dechunk(response.partition(b"\r\n\r\n")[2])
    assert not complete
    events = list(ssekit.iter_events(chunks))
    assert events[0] == ssekit.Event(data="one")
    assert [e.event for e in events[1:]] == ["error"]


# -- framing: where the engines differ (and proof --http reaches both sides) -------------


LONG_EXTENSION = b";" + b"e" * 5000  # over ssekit's 4 KiB chunk-size line; h11 reads it


async def test_a_long_chunk_extension_from_a_client_is_read_on_h11_and_refused_on_ssekit(
    http_engine: str,
) -> None:
    """The client side runs on the engine chosen: h11 reads a chunk-size line of any
    length up to its head bound, and the body goes through; ssekit's engine refuses it
    (400, the client's fault) and nothing goes upstream."""
    request = b"POST /v1/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    request += b"Connection: close\r\n\r\n2" + LONG_EXTENSION + b"\r\nhi\r\n0\r\n\r\n"

    async def answer(peer: Peer, seen: Seen) -> None:
        head = await peer.head()
        seen.requests.append(head + b"\r\n\r\n" + await peer.exactly(2))
        await peer.stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    async with deadline(10) as tg:
        upstream, seen = await start_raw_upstream(tg, answer)
        base = await start_proxy(tg, upstream)
        response = await exchange(base, request)
        metrics = await get_metrics(base)
    if http_engine == "h11":
        assert status_of(response) == 200, response[:300]
        assert response.endswith(b"\r\n\r\nok")
        assert seen.requests[0].endswith(b"\r\ncontent-length: 2\r\n\r\nhi")  # our own
        assert outcomes(metrics) == {"complete": 1}
    else:
        assert status_of(response) == 400, response[:300]
        assert seen.connections == 0
        assert outcomes(metrics) == {"bad_request": 1}


async def test_a_long_chunk_extension_from_upstream_cuts_the_stream_on_ssekit_only(
    http_engine: str,
) -> None:
    """The upstream side runs on the engine chosen: after a chunk, a chunk-size line
    ssekit's engine refuses cuts the client's stream (what came before it arrives whole);
    h11 reads it and the stream ends cleanly."""

    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD + chunk(b"data: one\n\n"))
        await anyio.sleep(0.05)
        await stream.send(b"b" + LONG_EXTENSION + b"\r\ndata: two\n\n\r\n0\r\n\r\n")
        await wait_closed(stream, seen)

    async with deadline(10) as tg:
        upstream, _ = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream)
        response = await exchange(base, b"GET /s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        metrics = await get_metrics(base)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    chunks, complete = dechunk(body)
    if http_engine == "h11":
        assert (chunks, complete) == ([b"data: one\n\n", b"data: two\n\n"], True)
        assert outcomes(metrics) == {"complete": 1}
    else:
        assert (chunks, complete) == ([b"data: one\n\n"], False)
        assert outcomes(metrics) == {"upstream_cut": 1}


# -- framing and blame: a reused upstream connection that was closed --------------


async def test_a_reused_upstream_connection_closed_on_the_next_request_is_retried_fresh() -> None:
    async def script(peer: Peer, seen: Seen) -> None:
        seen.requests.append(await peer.head())
        if seen.connections == 1:
            await peer.stream.send(OK)  # keep-alive...
            seen.requests.append(await peer.head())
            return  # ...then close on the next request without a byte of answer
        await peer.stream.send(OK_CLOSE)

    async with deadline(10) as tg:
        upstream, seen = await start_raw_upstream(tg, script)
        base = await start_proxy(tg, upstream)
        async with httpx.AsyncClient() as client:
            first = await client.get(base + "/v1/models")
            second = await client.get(base + "/v1/models")
    assert first.status_code == 200
    assert second.status_code == 200, second.text
    assert second.text == "ok"
    assert seen.connections == 2


@pytest.mark.parametrize("separate_write", [False, True], ids=["same-write", "next-write"])
async def test_bytes_an_upstream_sends_after_a_chunked_body_never_answer_the_next_request(
    separate_write: bool,
) -> None:
    # A second response smuggled after a complete chunked body: the connection cannot be
    # reused (those bytes would answer the next request), so the next request goes fresh.
    smuggled = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled"
    body = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    body += b"transfer-encoding: chunked\r\n\r\n" + chunk(b"data: one\n\n") + LAST_CHUNK

    async def script(peer: Peer, seen: Seen) -> None:
        seen.requests.append(await peer.head())
        if seen.connections == 1:
            if separate_write:
                await peer.stream.send(body)
                await anyio.sleep(0.05)
                await peer.stream.send(smuggled)
            else:
                await peer.stream.send(body + smuggled)
            await peer.until_closed(seen)
            return
        await peer.stream.send(OK_CLOSE)

    async with deadline(10) as tg:
        upstream, seen = await start_raw_upstream(tg, script)
        base = await start_proxy(tg, upstream)
        async with httpx.AsyncClient() as client:
            first = await client.get(base + "/v1/stream")
            await anyio.sleep(0.2)
            second = await client.get(base + "/v1/models")
    assert first.status_code == 200
    assert first.text == "data: one\n\n"
    assert second.status_code == 200
    assert second.text == "ok", second.text
    assert seen.connections == 2


# -- framing and blame: one limit on upstream response heads -------------------------


@pytest.mark.parametrize("in_pieces", [False, True], ids=["one-write", "1000-byte-writes"])
@pytest.mark.parametrize(("size", "status"), [(70_000, 502), (60_000, 200)])
async def test_upstream_response_heads_have_one_limit_however_they_arrive(
    size: int, status: int, in_pieces: bool
) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\nx-big: "
    head += b"a" * (size - len(head) - 4) + b"\r\n\r\n"
    assert len(head) == size

    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        if not in_pieces:
            await stream.send(head + b"ok")
            return
        for start in range(0, len(head), 1000):
            await stream.send(head[start : start + 1000])
            await anyio.sleep(0.002)  # separate reads on the proxy's side
        await stream.send(b"ok")

    async with deadline(10) as tg:
        upstream, _ = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream)  # --max-header-size: the 64 KiB default
        response = await exchange(base, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(response) == status, response[:200]
    if status == 200:
        assert b"\r\nx-big: " + b"a" * (size - 200) in response
        assert response.endswith(b"\r\n\r\nok")


# -- framing and blame: pooling at any descriptor number ----------------------------


@contextlib.contextmanager
def high_descriptor_numbers(count: int = 1100) -> Iterator[None]:
    """Hold ``count`` descriptors so that new sockets get numbers above 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # A machine that cannot hold them fails here loudly rather than skipping.
    assert hard == resource.RLIM_INFINITY or hard >= count + 200, f"hard limit {hard}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, count + 200), hard))
    held: list[int] = []
    try:
        while len(held) < count:
            held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_pooling_works_with_descriptor_numbers_above_1024() -> None:
    with high_descriptor_numbers():
        async with deadline(15) as tg:
            mock = await start_mock(tg, tokens=2, delay=0)
            base = await start_proxy(tg, mock)
            with socket.socket() as probe:
                probe_fd = probe.fileno()
            async with httpx.AsyncClient() as client:
                texts = [
                    (await client.post(base + "/v1/chat/completions", json=CHAT)).text
                    for _ in range(3)
                ]
            metrics = await get_metrics(base)
    assert probe_fd >= 1024
    assert all(text.endswith("data: [DONE]\n\n") for text in texts)
    assert metrics["ssekit_upstream_connections_total"] == 1
    assert metrics["ssekit_upstream_reuses_total"] == 2


# -- framing and blame: dot segments --------------------------------------------------

# Refuse, do not normalise: the proxy cannot know how the upstream decodes a path
# (%2F as a separator or not, %2e case, a second round of decoding), so any
# normalisation it did could disagree with the upstream's. A path whose segments,
# percent-decoded, include "." or ".." is refused with 400 and nothing goes upstream.
# "/v1/./x" climbs nowhere, but it is the same disagreement risk and refused alike.
DOT_SEGMENT_TARGETS = [
    b"/../x",
    b"/v1/../../x",
    b"/v1/%2e%2e/x",
    b"/%2e%2e/%2e%2e/x",
    b"/v1/%2E%2E%2Fx",
    b"/v1/..%2fsecret",
    b"/v1/./x",
    b"/v1/.%2e/x?q=1",
]


@pytest.mark.parametrize("target", DOT_SEGMENT_TARGETS, ids=lambda t: t.decode())
async def test_a_target_with_dot_segments_is_refused_and_nothing_goes_upstream(
    target: bytes,
) -> None:
    async with deadline(10) as tg:
        upstream, seen = await start_upstream(tg, answer_ok)
        base = await start_proxy(tg, upstream + "/prefix")
        response = await exchange(base, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(response) == 400, (response[:300], seen.requests)
    assert seen.connections == 0


async def test_dots_inside_a_segment_are_an_ordinary_path() -> None:
    # Regression guard for the refusal above: only whole "." / ".." segments count.
    async with deadline(10) as tg:
        upstream, seen = await start_upstream(tg, answer_ok)
        base = await start_proxy(tg, upstream + "/prefix")
        response = await exchange(
            base,
            b"GET /v1/files/a..b/.well-known/x. HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    assert status_of(response) == 200, response[:300]
    assert seen.requests[0].startswith(b"GET /prefix/v1/files/a..b/.well-known/x. HTTP/1.1")


# -- honest logs and metrics -----------------------------------------------------------


async def disconnect_mid_stream(base: str, wait_for_bytes: int) -> None:
    """Read a little of a stream, then hang up (a reset: unread data is pending)."""
    client = await anyio.connect_tcp("127.0.0.1", port_of(base))
    await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    received = b""
    while len(received) < wait_for_bytes:
        received += await client.receive()
    await client.aclose()


@pytest.mark.parametrize("heartbeat", [None, 0.05])
async def test_a_client_leaving_a_busy_stream_logs_no_error(
    caplog: pytest.LogCaptureFixture, heartbeat: float | None
) -> None:
    caplog.set_level(logging.INFO, logger="ssekit.proxy")
    event = b"data: " + b"x" * 4000 + b"\n\n"

    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD)
        while True:  # busy: as fast as the proxy takes it
            await stream.send(chunk(event))

    async with deadline(15) as tg:
        upstream, _ = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream, heartbeat=heartbeat, log_format="json")
        for _ in range(10):
            await disconnect_mid_stream(base, 64 * 1024)

        await wait_for(lambda: len(exchange_logs(caplog)) == 10)
        metrics = await get_metrics(base)
    assert errors_logged(caplog) == []
    assert [line["outcome"] for line in exchange_logs(caplog)] == ["client_disconnect"] * 10
    assert outcomes(metrics) == {"client_disconnect": 10}


async def test_a_client_leaving_during_heartbeats_logs_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ssekit.proxy")

    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD + chunk(b"data: one\n\n"))
        await wait_closed(stream, seen)  # then only heartbeats flow

    async with deadline(15) as tg:
        upstream, seen = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream, heartbeat=0.05, log_format="json")
        for round_ in range(5):
            client = await anyio.connect_tcp("127.0.0.1", port_of(base))
            await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            while received.count(b": heartbeat\n") < 2 + round_ % 2:
                received += await client.receive()
            await client.aclose()
        await wait_for(lambda: len(exchange_logs(caplog)) == 5)
        await wait_for(lambda: len(seen.closed_at) == 5)
        metrics = await get_metrics(base)
    assert errors_logged(caplog) == []
    assert [line["outcome"] for line in exchange_logs(caplog)] == ["client_disconnect"] * 5
    assert outcomes(metrics) == {"client_disconnect": 5}


async def test_a_stream_cut_by_the_drain_deadline_is_logged_as_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ssekit.proxy")
    async with deadline(20) as tg:
        mock = await start_mock(tg, tokens=100, delay=0.05)
        shutdown = anyio.Event()
        config = proxy_config(mock, drain_timeout=0.2, log_format="json")
        host, port = await tg.start(
            lambda task_status: serve(config, task_status=task_status, shutdown=shutdown)
        )
        received = b""
        cut_seen = False
        async with httpx.AsyncClient() as client:
            try:
                async with client.stream(
                    "POST", f"http://{host}:{port}/v1/chat/completions", json=CHAT
                ) as response:
                    async for data in response.aiter_bytes():
                        received += data
                        shutdown.set()
            except httpx.RemoteProtocolError:
                cut_seen = True
        await wait_for(lambda: len(exchange_logs(caplog)) == 1)
    assert cut_seen
    assert not received.endswith(b"data: [DONE]\n\n")
    (line,) = exchange_logs(caplog)
    assert line["status"] == 200
    assert line["outcome"] == "shutdown"
    assert line["done"] is False


async def test_no_access_log_logs_only_the_exchanges_that_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ssekit.proxy")

    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        if b"/cut" in seen.requests[-1]:
            await stream.send(SSE_HEAD + chunk(b"data: half"))  # then closes: a cut stream
        else:
            await stream.send(SSE_HEAD + chunk(b"data: whole\n\n") + LAST_CHUNK)

    async with deadline(10) as tg:
        upstream, _ = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream, log_format="json", no_access_log=True)
        whole = await exchange(base, b"GET /whole HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await exchange(base, b"GET /cut HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await exchange(
            base, b"GET /_ssekit/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        await wait_for(lambda: len(exchange_logs(caplog, admin=True)) >= 1)
        metrics = await get_metrics(base)
    assert b"data: whole" in whole
    # Only the cut stream is logged; the metrics count all three.
    assert [(line["path"], line["outcome"]) for line in exchange_logs(caplog, admin=True)] == [
        ("/cut", "upstream_cut")
    ]
    assert outcomes(metrics) == {"complete": 1, "upstream_cut": 1, "local": 1}


async def test_the_503_for_too_many_connections_is_logged_and_counted_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ssekit.proxy")
    async with deadline(10) as tg:
        mock = await start_mock(tg)
        base = await start_proxy(tg, mock, max_connections=1, log_format="json")
        first = await anyio.connect_tcp("127.0.0.1", port_of(base))  # holds the only slot
        async with first:
            await first.send(b"GET /_ssekit/health HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b'{"status":"ok"}'):
                answer += await first.receive()
            refused = await exchange(base, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
            await wait_for(lambda: any(line["status"] == 503 for line in exchange_logs(caplog)))
            # Read the metrics on the connection that holds the slot (no race for it).
            await first.send(
                b"GET /_ssekit/metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            answer = await read_all(first, within=3.0)
    metrics = {}
    for line in answer.partition(b"\r\n\r\n")[2].decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            metrics[name] = float(value)
    assert status_of(refused) == 503
    lines = [line for line in exchange_logs(caplog) if line["status"] == 503]
    assert len(lines) == 1, exchange_logs(caplog, admin=True)
    assert lines[0]["outcome"] == "overloaded"
    assert outcomes(metrics).get("overloaded") == 1
    assert metrics.get('ssekit_requests_total{status="503"}') == 1


async def cut_upstream(stream: anyio.abc.SocketStream, seen: Seen) -> None:
    await stream.send(SSE_HEAD + chunk(b"data: partial\n\n"))
    await anyio.sleep(0.05)  # then die: no last-chunk


async def hold_upstream(stream: anyio.abc.SocketStream, seen: Seen) -> None:
    await stream.send(SSE_HEAD + chunk(b"data: partial\n\n"))
    await wait_closed(stream, seen)


async def mute_upstream(stream: anyio.abc.SocketStream, seen: Seen) -> None:
    await wait_closed(stream, seen)


async def client_sees(base: str, kind: str) -> tuple[int, bool]:
    """One exchange of the given kind; (status the client saw, body complete)."""
    if kind == "bad_request":
        response = await exchange(base, b"NOT HTTP AT ALL\r\n\r\n")
        return status_of(response) or 0, True
    if kind == "client_disconnect":
        client = await anyio.connect_tcp("127.0.0.1", port_of(base))
        await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while b"data: partial" not in received:
            received += await client.receive()
        await client.aclose()
        return status_of(received) or 0, False
    response = await exchange(base, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    complete = b"content-length" in head.lower() or dechunk(body)[1]
    return status_of(response) or 0, complete


@pytest.mark.parametrize(
    ("kind", "script", "settings", "status", "outcome"),
    [
        ("upstream_cut", cut_upstream, {}, 200, "upstream_cut"),
        ("client_disconnect", hold_upstream, {}, 200, "client_disconnect"),
        ("bad_request", mute_upstream, {}, 400, "bad_request"),
        ("upstream_timeout", mute_upstream, {"first_byte_timeout": 0.2}, 504, "upstream_timeout"),
        ("unauthorized", mute_upstream, {"client_tokens": ("t0k",)}, 401, "unauthorized"),
    ],
)
async def test_logs_metrics_and_the_client_agree_on_one_exchange(
    caplog: pytest.LogCaptureFixture,
    kind: str,
    script: Any,
    settings: dict[str, Any],
    status: int,
    outcome: str,
) -> None:
    # Regression guard for "one place sets the outcome" (these pass before the hardening).
    caplog.set_level(logging.INFO, logger="ssekit.proxy")
    async with deadline(10) as tg:
        upstream, _ = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream, log_format="json", **settings)
        seen_status, complete = await client_sees(base, kind)
        await wait_for(lambda: len(exchange_logs(caplog)) >= 1)
        await anyio.sleep(0.1)  # room for a wrong second line to show up
        token = settings.get("client_tokens", (None,))[0]
        metrics = await get_metrics(base, token)
    assert seen_status == status
    assert complete == (status != 200)
    (line,) = exchange_logs(caplog)
    assert (line["status"], line["outcome"]) == (status, outcome)
    counted = {k: v for k, v in outcomes(metrics).items() if k != "local"}
    assert counted == {outcome: 1}
    if status != 200:
        assert metrics[f'ssekit_requests_total{{status="{status}"}}'] == 1
    assert errors_logged(caplog) == []


async def test_the_metrics_name_the_http_engine_serving_both_sides(http_engine: str) -> None:
    async with deadline(10) as tg:
        mock = await start_mock(tg, tokens=1, delay=0)
        base = await start_proxy(tg, mock)
        metrics = await get_metrics(base)
    engines = {name: value for name, value in metrics.items() if "http_engine" in name}
    assert engines == {f'ssekit_http_engine{{engine="{http_engine}"}}': 1.0}


# -- the failed decoder tap -------------------------------------------------------------


LIMIT = ssekit.DEFAULT_MAX_EVENT_SIZE  # the decoder tap's bound on one line (16 MiB)


def long_line(size: int) -> list[bytes]:
    """``data: xxx...`` of ``size`` bytes in 256 KiB pieces, no line break."""
    piece = 256 * 1024
    line = [b"data: " + b"x" * (piece - 6)]
    while (sent := sum(map(len, line))) < size:
        line.append(b"x" * min(piece, size - sent))
    return line


@pytest.mark.parametrize(
    "body",
    [
        # The line grows past the bound and never ends (regression guard: the
        # tap stays mid-line here and inserts nothing even before the hardening).
        pytest.param(long_line(LIMIT + 1024 * 1024), id="line-never-ends"),
        # The chunk that takes the line past the bound also ends it and starts
        # another line ("data: par", unterminated): the tap fails with nothing
        # buffered, so before the hardening it read "at a boundary" and let
        # heartbeats and the error event into the middle of "data: par".
        pytest.param(
            [*long_line(LIMIT - 10), b"y" * 100 + b"\ndata: par"], id="line-ends-past-the-bound"
        ),
    ],
)
async def test_after_the_decoder_tap_fails_nothing_is_inserted_into_the_stream(
    body: list[bytes],
) -> None:
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD)
        for part in body:
            await stream.send(chunk(part))
        await anyio.sleep(0.3)  # several heartbeat intervals, mid-line
        # ...then die without the last-chunk.

    async with deadline(20) as tg:
        upstream, _ = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream, error_event=True, heartbeat=0.05)
        response = await exchange(base, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", within=15)
    head, _, raw_body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    chunks, complete = dechunk(raw_body)
    assert not complete
    forwarded = b"".join(chunks)
    expected = b"".join(body)
    assert forwarded == expected, (
        f"the proxy wrote its own bytes into the stream: {forwarded[len(expected) - 20 :]!r}"
    )


# -- security: who may read the metrics ---------------------------------------------------


async def test_metrics_need_the_client_token_when_tokens_are_on_but_health_stays_open() -> None:
    async with deadline(10) as tg:
        mock = await start_mock(tg)
        base = await start_proxy(tg, mock, client_tokens=("t0k",))
        async with httpx.AsyncClient() as client:
            anonymous = await client.get(base + "/_ssekit/metrics")
            wrong = await client.get(
                base + "/_ssekit/metrics", headers={"Authorization": "Bearer nope"}
            )
            allowed = await client.get(
                base + "/_ssekit/metrics", headers={"Authorization": "Bearer t0k"}
            )
            health = await client.get(base + "/_ssekit/health")
    assert anonymous.status_code == 401
    assert wrong.status_code == 401
    assert allowed.status_code == 200
    assert "ssekit_requests_total" in allowed.text
    assert health.status_code == 200


async def statuses_by_token(base: str, token: str | None) -> dict[str, int]:
    """Status of metrics, health and a proxied chat request, sent with ``token`` (or none)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(headers=headers) as client:
        return {
            "metrics": (await client.get(base + "/_ssekit/metrics")).status_code,
            "health": (await client.get(base + "/_ssekit/health")).status_code,
            "chat": (await client.post(base + "/v1/chat/completions", json=CHAT)).status_code,
        }


async def test_an_admin_token_guards_metrics_and_the_client_token_no_longer_opens_them() -> None:
    async with deadline(10) as tg:
        mock = await start_mock(tg, tokens=1, delay=0)
        base = await start_proxy(tg, mock, client_tokens=("t0k",), admin_tokens=("adm",))
        seen = {token: await statuses_by_token(base, token) for token in (None, "t0k", "adm")}
    assert seen[None] == {"metrics": 401, "health": 200, "chat": 401}
    assert seen["t0k"] == {"metrics": 401, "health": 200, "chat": 200}
    # The admin token reads metrics; it is not a client token.
    assert seen["adm"] == {"metrics": 200, "health": 200, "chat": 401}


async def test_an_admin_token_alone_guards_metrics_and_leaves_proxying_open() -> None:
    async with deadline(10) as tg:
        mock = await start_mock(tg, tokens=1, delay=0)
        base = await start_proxy(tg, mock, admin_tokens=("adm",))
        seen = {token: await statuses_by_token(base, token) for token in (None, "adm")}
    assert seen[None] == {"metrics": 401, "health": 200, "chat": 200}
    assert seen["adm"] == {"metrics": 200, "health": 200, "chat": 200}


def test_parse_chunked_and_dechunk_agree() -> None:
    # The linear helper above must read bodies as _servers.parse_chunked does.
    body = chunk(b"ab") + chunk(b"c" * 300) + LAST_CHUNK
    assert dechunk(body) == parse_chunked(body)
    assert dechunk(body[:-5]) == parse_chunked(body[:-5])
