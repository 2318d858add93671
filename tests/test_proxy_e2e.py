"""The proxy end to end over real loopback sockets: forwarding, faults, limits."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import hypothesis.strategies as st
import pytest
import trustme
from _servers import (
    LAST_CHUNK,
    SSE_HEAD,
    Seen,
    chunk,
    deadline,
    mock_config,
    parse_chunked,
    proxy_config,
    raw_exchange,
    read_request,
    start_connect_proxy,
    start_mock,
    start_proxy,
    start_upstream,
    wait_closed,
)
from hypothesis import given, settings

import ssekit

# Every test on both HTTP/1.1 engines: the proxy and mock _servers starts run on it.
pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("http_engine")]
CHAT = {"model": "ssekit-mock", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def post_stream(base: str) -> bytes:
    body = json.dumps(CHAT).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
    )


# -- forwarding: bytes and chunk boundaries unchanged ---------------------


@settings(max_examples=10)
@given(
    st.lists(
        st.binary(min_size=1, max_size=300)
        | st.sampled_from(
            [b"data: \xe4\xbd\xa0\xe5", b"\xa5\xbd\r", b"\n\r\n", b"data: [DONE]\n\n"]
        ),
        min_size=1,
        max_size=12,
    )
)
def test_any_upstream_chunking_reaches_the_client_byte_and_chunk_identical(
    pieces: list[bytes],
) -> None:
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD)
        for piece in pieces:
            await stream.send(chunk(piece))
            await anyio.sleep(0.005)  # separate reads, so chunks cannot merge
        await stream.send(LAST_CHUNK)

    async def main() -> None:
        async with deadline(20) as tg:
            upstream, _ = await start_upstream(tg, script)
            base = await start_proxy(tg, upstream)
            response = await raw_exchange(
                base, b"GET /stream HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n"
            )
            head, _, body = response.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            chunks, complete = parse_chunked(body)
            assert complete
            assert chunks == pieces

    anyio.run(main)


async def test_request_headers_are_rewritten_and_body_forwarded() -> None:
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-up: 1\r\n\r\nok")

    async with deadline(10) as tg:
        upstream, seen = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream + "/prefix")
        async with httpx.AsyncClient() as client:
            response = await client.post(
                base + "/v1/x?q=1",
                content=b"hello",
                headers={"Connection": "close, X-Hop", "X-Hop": "drop me", "Keep-Alive": "5"},
            )
        assert response.status_code == 200
        assert response.text == "ok"
        assert response.headers["x-up"] == "1"
        assert response.headers["via"] == "1.1 ssekit"
        request = seen.requests[0]
        assert request.startswith(b"POST /prefix/v1/x?q=1 HTTP/1.1\r\n")
        assert request.endswith(b"\r\n\r\nhello")
        assert seen.header(b"host") == upstream.removeprefix("http://").encode()
        assert seen.header(b"x-hop") is None
        assert seen.header(b"keep-alive") is None
        assert seen.header(b"x-forwarded-for") == b"127.0.0.1"
        assert seen.header(b"x-forwarded-proto") == b"http"
        assert seen.header(b"via") == b"1.1 ssekit"


@pytest.mark.parametrize("request_buffer", [1 << 20, 0], ids=["buffered", "streamed"])
async def test_chunked_request_body_is_streamed_upstream(request_buffer: int) -> None:
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    async def body() -> AsyncIterator[bytes]:
        for part in (b'{"a":', b" 1}"):
            yield part
            await anyio.sleep(0.01)

    async with deadline(10) as tg:
        upstream, seen = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream, request_buffer=request_buffer)
        async with httpx.AsyncClient() as client:
            response = await client.post(base + "/v1/x", content=body())
        assert response.text == "ok"
        request = seen.requests[0]
        if request_buffer:  # read whole within --request-buffer: sent with its length
            assert seen.header(b"transfer-encoding") is None
            assert seen.header(b"content-length") == b"8"
            assert request.endswith(b'\r\n\r\n{"a": 1}')
        else:  # streamed as it came, each piece its own chunk
            assert seen.header(b"transfer-encoding") == b"chunked"
            assert request.endswith(b'\r\n\r\n5\r\n{"a":\r\n3\r\n 1}\r\n0\r\n\r\n')


async def test_keep_alive_reuses_one_upstream_connection() -> None:
    async with deadline(20) as tg:
        mock = await start_mock(tg, tokens=3, delay=0)
        base = await start_proxy(tg, mock)
        async with httpx.AsyncClient() as client:
            for _ in range(3):
                response = await client.post(base + "/v1/chat/completions", json=CHAT)
                assert response.text.endswith("data: [DONE]\n\n")
            metrics = (await client.get(base + "/_ssekit/metrics")).text
        assert "ssekit_upstream_connections_total 1\n" in metrics
        assert "ssekit_upstream_reuses_total 2\n" in metrics
        assert 'ssekit_streams_total{outcome="complete"} 3' in metrics
        assert "ssekit_events_total 18\n" in metrics  # 3 x (role + 3 tokens + stop + DONE)


async def test_pipelined_requests_are_answered_in_order_on_one_connection() -> None:
    """RFC 9112 9.3.2: requests sent back to back before any answer get their answers
    in the order sent; the last one's Connection: close ends the connection after it."""
    body = json.dumps({**CHAT, "stream": False}).encode()
    requests = (
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s"
        b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (len(body), body)
    )
    async with deadline(20) as tg:
        mock = await start_mock(tg, tokens=3, delay=0)
        base = await start_proxy(tg, mock)
        answers = await raw_exchange(base, requests)  # read until the proxy closes
    responses = answers.split(b"HTTP/1.1 ")[1:]
    # The mock's reason phrases, forwarded as the upstream sent them.
    assert [response.split(b"\r\n")[0] for response in responses] == [
        b"200 OK",
        b"200 OK",
        b"404 Not Found",
    ]
    assert b'"object": "list"' in responses[0]
    assert b'"chat.completion"' in responses[1]
    assert b"unknown path /nowhere" in responses[2]
    assert b"connection: close" in responses[2].lower()


async def test_health_endpoint_and_configurable_admin_prefix() -> None:
    async with deadline(10) as tg:
        mock = await start_mock(tg)
        base = await start_proxy(tg, mock, admin_prefix="/ops")
        async with httpx.AsyncClient() as client:
            health = await client.get(base + "/ops/health")
            assert health.json() == {"status": "ok"}
            assert health.reason_phrase == "OK"  # the proxy's own answers carry their phrase
            # The default prefix is now forwarded to the upstream (which has no such path).
            assert (await client.get(base + "/_ssekit/health")).status_code == 404


# -- client disconnects ----------------------------------------------------


async def test_client_disconnect_mid_stream_closes_the_upstream_at_once() -> None:
    sent_first = anyio.Event()

    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD + chunk(b"data: 1\n\n"))
        sent_first.set()
        await wait_closed(stream, seen)

    async with deadline(10) as tg:
        upstream, seen = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream)
        client = await anyio.connect_tcp("127.0.0.1", int(base.rsplit(":", 1)[1]))
        await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while b"data: 1" not in received:
            received += await client.receive()
        await client.aclose()
        closed = time.monotonic()
        with anyio.fail_after(2):
            while not seen.closed_at:
                await anyio.sleep(0.001)
        # Measured precisely in benchmarks; here only "promptly" on a loaded machine.
        assert seen.closed_at[0] - closed < 1.0


async def test_client_disconnect_before_the_response_head_closes_the_upstream() -> None:
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await wait_closed(stream, seen)  # silent: never answers

    async with deadline(10) as tg:
        upstream, seen = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream)
        client = await anyio.connect_tcp("127.0.0.1", int(base.rsplit(":", 1)[1]))
        await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with anyio.fail_after(2):
            while not seen.requests:
                await anyio.sleep(0.005)
        await client.aclose()
        with anyio.fail_after(2):
            while not seen.closed_at:
                await anyio.sleep(0.001)


# -- upstream failures -----------------------------------------------------


@pytest.mark.parametrize("error_event", [False, True])
async def test_upstream_dying_mid_stream_cuts_the_client_response(error_event: bool) -> None:
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD + chunk(b"data: partial answer\n\n"))
        await anyio.sleep(0.05)
        # Crash: close without the last-chunk.

    async with deadline(10) as tg:
        upstream, _ = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream, error_event=error_event)
        received = b""
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.RemoteProtocolError):
                async with client.stream("GET", base + "/") as response:
                    async for data in response.aiter_bytes():
                        received += data
        events = list(ssekit.iter_events([received]))
        assert events[0] == ssekit.Event(data="partial answer")
        if error_event:
            assert events[1].event == "error"
            assert json.loads(events[1].data)["error"]["type"] == "proxy_error"
        else:
            assert len(events) == 1
        # Raw view: no terminating zero-length chunk ever reaches the client.
        raw = await raw_exchange(base, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        chunks, complete = parse_chunked(raw.partition(b"\r\n\r\n")[2])
        assert not complete
        assert chunks[0] == b"data: partial answer\n\n"


async def test_upstream_stalling_mid_stream_is_cut_by_the_idle_timeout() -> None:
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD + chunk(b"data: 1\n\n"))
        await wait_closed(stream, seen)

    async with deadline(10) as tg:
        upstream, seen = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream, idle_timeout=0.3)
        started = time.monotonic()
        raw = await raw_exchange(base, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert time.monotonic() - started >= 0.3
        assert parse_chunked(raw.partition(b"\r\n\r\n")[2]) == ([b"data: 1\n\n"], False)
        with anyio.fail_after(2):
            while not seen.closed_at:
                await anyio.sleep(0.01)


async def test_upstream_accepting_but_never_answering_gets_504() -> None:
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await wait_closed(stream, seen)

    async with deadline(10) as tg:
        upstream, _ = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream, first_byte_timeout=0.2)
        async with httpx.AsyncClient() as client:
            response = await client.get(base + "/v1/models")
        assert response.status_code == 504
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("proxy_error", 504)


async def test_unreachable_upstream_gets_502_after_the_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "ssekit.proxy")
    async with deadline(10) as tg:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        await listener.aclose()  # nothing listens there now: connection refused
        base = await start_proxy(
            tg, f"http://127.0.0.1:{port}", retries=2, retry_backoff=0.01, log_format="json"
        )
        async with httpx.AsyncClient() as client:
            response = await client.get(base + "/v1/models")
            metrics = (await client.get(base + "/_ssekit/metrics")).text
        assert response.status_code == 502
        assert response.json()["error"]["code"] == 502
        assert 'ssekit_streams_total{outcome="upstream_error"} 1' in metrics
    # The request's access log line: three connection attempts (two retries), then 502.
    log = [
        json.loads(r.getMessage())
        for r in caplog.records
        if r.name == "ssekit.proxy" and r.levelno == logging.INFO
    ]
    (line,) = [line for line in log if line["path"] == "/v1/models"]
    assert (line["status"], line["outcome"], line["attempts"]) == (502, "upstream_error", 3)


async def test_a_request_that_reached_the_upstream_is_never_sent_twice() -> None:
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        pass  # took the whole request, then the connection drops without an answer

    async with deadline(10) as tg:
        upstream, seen = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream, retries=3, retry_backoff=0.01)
        async with httpx.AsyncClient() as client:
            response = await client.post(base + "/v1/chat/completions", json=CHAT)
    assert response.status_code == 502
    assert seen.connections == 1  # a second copy could run (and bill) the request twice
    assert len(seen.requests) == 1


async def test_connect_failures_before_the_first_byte_are_retried() -> None:
    async with deadline(10) as tg:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        await listener.aclose()
        base = await start_proxy(tg, f"http://127.0.0.1:{port}", retries=5, retry_backoff=0.1)

        async def bring_upstream_up() -> None:
            await anyio.sleep(0.15)
            await tg.start(
                lambda task_status: ssekit.proxy.serve_mock(
                    mock_config(listen_port=port, tokens=2, delay=0),
                    task_status=task_status,
                )
            )

        tg.start_soon(bring_upstream_up)
        async with httpx.AsyncClient() as client:
            response = await client.post(base + "/v1/chat/completions", json=CHAT)
        assert response.status_code == 200
        assert response.text.endswith("data: [DONE]\n\n")


async def test_connect_timeout_through_a_silent_connect_proxy_gets_504() -> None:
    async def silent(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await wait_closed(stream, seen)

    async with deadline(10) as tg:
        # A "proxy" that reads the CONNECT and never answers: the connect times out.
        silent_proxy, _ = await start_upstream(tg, silent)
        base = await start_proxy(
            tg, "http://127.0.0.1:9", upstream_proxy=silent_proxy, connect_timeout=0.2, retries=0
        )
        async with httpx.AsyncClient() as client:
            response = await client.get(base + "/v1/models")
        assert response.status_code == 504


# -- TLS and CONNECT -------------------------------------------------------


async def test_https_upstream_verified_with_a_private_ca(tmp_path: object) -> None:
    ca = trustme.CA()
    server_context = __import__("ssl").create_default_context(__import__("ssl").Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    ca_file = f"{tmp_path}/ca.pem"
    ca.cert_pem.write_to_path(ca_file)

    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD + chunk(b"data: secure\n\n") + LAST_CHUNK)

    async with deadline(10) as tg:
        upstream, seen = await start_upstream(tg, script, tls=server_context)
        base = await start_proxy(tg, upstream, upstream_ca=ca_file)
        untrusted = await start_proxy(tg, upstream)  # system store: must refuse
        async with httpx.AsyncClient() as client:
            response = await client.get(base + "/")
            refused = await client.get(untrusted + "/")
        assert response.text == "data: secure\n\n"
        assert seen.header(b"host", 0) == upstream.removeprefix("https://").encode()
        assert refused.status_code == 502  # the same upstream, not verified by the system store
        assert refused.json()["error"]["code"] == 502


@pytest.mark.parametrize(
    "opened",
    [
        b"HTTP/1.1 200 Connection established\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nProxy-Agent: x\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",  # RFC 9110 9.3.6: any 2xx opens the tunnel
    ],
)
async def test_upstream_reached_through_an_http_connect_proxy(opened: bytes) -> None:
    targets: list[bytes] = []
    async with deadline(10) as tg:
        mock = await start_mock(tg, tokens=2, delay=0)
        connect_proxy = await start_connect_proxy(tg, targets, opened)
        base = await start_proxy(tg, mock, upstream_proxy=connect_proxy)
        async with httpx.AsyncClient() as client:
            response = await client.post(base + "/v1/chat/completions", json=CHAT)
        assert response.text.endswith("data: [DONE]\n\n")
        assert targets == [mock.removeprefix("http://").encode()]


async def test_a_connect_proxy_that_refuses_the_tunnel_is_a_bad_gateway() -> None:
    targets: list[bytes] = []
    async with deadline(10) as tg:
        connect_proxy = await start_connect_proxy(tg, targets)  # 403 for any host not local
        base = await start_proxy(
            tg, "http://upstream.invalid:80", upstream_proxy=connect_proxy, retries=0
        )
        async with httpx.AsyncClient() as client:
            response = await client.get(base + "/v1/models")
        assert response.status_code == 502
        assert response.json()["error"]["code"] == 502
        assert targets == [b"upstream.invalid:80"]  # asked for, refused: nothing else reached


# -- keys and tokens -------------------------------------------------------


async def test_server_held_api_keys_replace_the_clients_and_rotate() -> None:
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")

    async with deadline(10) as tg:
        upstream, seen = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream, api_keys=("k1", "k2"), client_tokens=("t0k",))
        async with httpx.AsyncClient() as client:
            refused = await client.get(base + "/v1/models")
            wrong = await client.get(base + "/v1/models", headers={"Authorization": "Bearer no"})
            for _ in range(2):
                ok = await client.get(base + "/v1/models", headers={"Authorization": "Bearer t0k"})
                assert ok.status_code == 200
        assert refused.status_code == 401
        assert wrong.status_code == 401
        assert len(seen.requests) == 2  # the refused ones never went upstream
        assert {seen.header(b"authorization", 0), seen.header(b"authorization", 1)} == {
            b"Bearer k1",
            b"Bearer k2",
        }


# -- bad requests ----------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405),
        (b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n", 400),
        (b"GET http://other.test/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ],
)
async def test_bad_requests_get_an_error_status_and_nothing_goes_upstream(
    request_bytes: bytes, status: int
) -> None:
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        raise AssertionError("nothing may reach the upstream")

    async with deadline(10) as tg:
        upstream, seen = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream)
        response = await raw_exchange(base, request_bytes)
    assert response.startswith(b"HTTP/1.1 %d " % status)
    assert b"connection: close" in response.lower()
    assert seen.connections == 0


async def test_connections_over_the_limit_get_503() -> None:
    async with deadline(10) as tg:
        mock = await start_mock(tg)
        base = await start_proxy(tg, mock, max_connections=1)
        port = int(base.rsplit(":", 1)[1])
        first = await anyio.connect_tcp("127.0.0.1", port)  # holds the only slot
        async with first:
            await anyio.sleep(0.05)
            response = await raw_exchange(base, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 503 ")
        assert b"too many connections" in response


async def test_slowloris_client_gets_408_after_the_header_timeout() -> None:
    async with deadline(10) as tg:
        mock = await start_mock(tg)
        base = await start_proxy(tg, mock, header_timeout=0.3)
        client = await anyio.connect_tcp("127.0.0.1", int(base.rsplit(":", 1)[1]))
        async with client:
            await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            started = time.monotonic()
            response = b""
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                while True:
                    response += await client.receive()
        assert response.startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started >= 0.25


# -- backpressure, heartbeats, load, drain --------------------------------


async def test_slow_client_pauses_the_upstream_instead_of_buffering() -> None:
    payload = b"data: " + b"x" * 65_000 + b"\n\n"

    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD)
        for _ in range(2000):  # up to ~130 MB if nothing pushed back
            await stream.send(chunk(payload))
            seen.sent += len(payload)

    async with deadline(20) as tg:
        upstream, seen = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream)
        client = await anyio.connect_tcp("127.0.0.1", int(base.rsplit(":", 1)[1]))
        async with client:
            await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            received = 0
            for _ in range(20):  # a slow reader: ~4 KB every 50 ms for one second
                received += len(await client.receive(4096))
                await anyio.sleep(0.05)
            in_flight = seen.sent - received
        # What the kernel may buffer: the proxy's receive buffer from the upstream and its
        # send buffer to the client grow up to tcp_rmem's and tcp_wmem's maximum (32 MB and
        # 4 MB on some machines: a fixed bound failed there), the test's own sockets a few
        # MB more; the proxy itself holds one chunk.
        kernel = _tcp_buffer_max("tcp_rmem") + _tcp_buffer_max("tcp_wmem")
        assert in_flight < kernel + 8 * 1024 * 1024, (in_flight, kernel)
        assert seen.sent < 2000 * len(payload)


def _tcp_buffer_max(name: str) -> int:
    """The most a TCP socket's buffer may grow to (the third of /proc's three values)."""
    return int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2])


@pytest.mark.parametrize("idle_timeout", [300.0, 0.3])
async def test_a_paused_upstream_resumes_and_the_client_gets_every_chunk_intact(
    idle_timeout: float,
) -> None:
    # A client that stalls long enough for the proxy to stop reading the upstream, then
    # reads on: every event arrives, whole, in order, each in its own chunk, then the end.
    # The stall is the client's: it never counts against the upstream's idle timeout.
    events = [b"data: %d %s\n\n" % (i, b"y" * 60_000) for i in range(200)]  # ~12 MB

    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD)
        for event in events:
            await stream.send(chunk(event))
        await stream.send(LAST_CHUNK)

    async with deadline(30) as tg:
        upstream, _ = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream, idle_timeout=idle_timeout)
        client = await anyio.connect_tcp("127.0.0.1", int(base.rsplit(":", 1)[1]))
        async with client:
            await client.send(b"GET / HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n")
            raw = bytearray(await client.receive(1024))
            await anyio.sleep(1.0)  # buffers on both hops fill; the proxy pauses its read
            while True:
                try:
                    raw += await client.receive(1 << 20)
                except anyio.EndOfStream:
                    break
    chunks, complete = parse_chunked(bytes(raw).partition(b"\r\n\r\n")[2])
    assert complete
    assert chunks == events


@pytest.mark.parametrize(
    ("body", "events", "complete"),
    [
        (LAST_CHUNK, [], True),  # an empty body
        (chunk(b"data: one\n\n") + LAST_CHUNK, [b"data: one\n\n"], True),
        (b"zz\r\ndata\r\n", [], False),  # malformed: the answer is cut, never ended
    ],
    ids=["empty", "whole", "malformed"],
)
async def test_a_head_arriving_with_its_body_in_one_read_is_forwarded_whole(
    body: bytes, events: list[bytes], complete: bool
) -> None:
    # The head must reach the client whatever came with it: nothing, the whole body, or
    # framing the proxy refuses (then the head, the error event, and a cut).
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD + body)
        await anyio.sleep(0.2)

    async with deadline(10) as tg:
        upstream, _ = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream, error_event=True)
        raw = await raw_exchange(base, b"GET / HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n")
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"text/event-stream" in head
    chunks, ended = parse_chunked(rest)
    assert ended is complete
    if complete:
        assert chunks == events
    else:
        assert len(chunks) == 1
        error = ssekit.Decoder().feed(chunks[0])
        assert [e.event for e in error] == ["error"]
        assert error[0].json()["error"]["type"] == "proxy_error"


async def test_heartbeats_fill_idle_time_between_events_only() -> None:
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD + chunk(b"data: one\n\n"))
        await anyio.sleep(0.5)
        await stream.send(chunk(b"data: tw"))  # mid-event: no heartbeat may split it
        await anyio.sleep(0.5)
        await stream.send(chunk(b"o\n\n") + LAST_CHUNK)

    async with deadline(10) as tg:
        upstream, _ = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream, heartbeat=0.1)
        raw = await raw_exchange(base, b"GET / HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n")
    chunks, complete = parse_chunked(raw.partition(b"\r\n\r\n")[2])
    assert complete
    assert chunks[0] == b"data: one\n\n"
    assert b": heartbeat\n" in chunks[1:3]
    between = chunks[chunks.index(b"data: tw") + 1 :]
    assert between == [b"o\n\n"]  # nothing inserted inside the event
    items = ssekit.Decoder(comments=True).feed(b"".join(chunks))
    assert [i for i in items if isinstance(i, ssekit.Event)] == [
        ssekit.Event(data="one"),
        ssekit.Event(data="two"),
    ]


async def test_heartbeats_never_hide_a_stalled_upstream() -> None:
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD + chunk(b"data: one\n\n"))
        await wait_closed(stream, seen)

    async with deadline(10) as tg:
        upstream, _ = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream, heartbeat=0.1, idle_timeout=0.5)
        raw = await raw_exchange(base, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    chunks, complete = parse_chunked(raw.partition(b"\r\n\r\n")[2])
    assert not complete
    assert chunks.count(b": heartbeat\n") >= 2


async def test_two_hundred_concurrent_streams() -> None:
    async with deadline(60) as tg:
        mock = await start_mock(tg, tokens=5, delay=0.01)
        base = await start_proxy(tg, mock)
        texts: list[str] = []
        limits = httpx.Limits(max_connections=250)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:

            async def one() -> None:
                async with client.stream("POST", base + "/v1/chat/completions", json=CHAT) as r:
                    events = ssekit.aiter_events(r.aiter_bytes())
                    chunks = [c async for c in ssekit.aiter_chunks(events)]
                    texts.append(ssekit.join_deltas(chunks))

            async with anyio.create_task_group() as streams:
                for _ in range(200):
                    streams.start_soon(one)
        assert len(texts) == 200
        assert set(texts) == {ssekit.proxy._mock.mock_text(5)}


async def test_graceful_drain_lets_streams_finish_and_stops_accepting() -> None:
    async with deadline(20) as tg:
        mock = await start_mock(tg, tokens=10, delay=0.05)
        shutdown = anyio.Event()
        config = proxy_config(mock, drain_timeout=5)
        host, port = await tg.start(
            lambda task_status: ssekit.proxy.serve(
                config, task_status=task_status, shutdown=shutdown
            )
        )
        base = f"http://{host}:{port}"
        async with httpx.AsyncClient() as client:
            async with client.stream("POST", base + "/v1/chat/completions", json=CHAT) as r:
                received = b""
                async for data in r.aiter_bytes():
                    received += data
                    if not shutdown.is_set():
                        shutdown.set()
                        await anyio.sleep(0.05)
                        with pytest.raises(httpx.ConnectError):
                            await httpx.AsyncClient().get(base + "/_ssekit/health")
        assert received.endswith(b"data: [DONE]\n\n")


async def test_drain_deadline_cuts_streams_that_run_too_long() -> None:
    async with deadline(20) as tg:
        mock = await start_mock(tg, tokens=100, delay=0.05)
        shutdown = anyio.Event()
        config = proxy_config(mock, drain_timeout=0.2)
        host, port = await tg.start(
            lambda task_status: ssekit.proxy.serve(
                config, task_status=task_status, shutdown=shutdown
            )
        )
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.RemoteProtocolError):
                async with client.stream(
                    "POST", f"http://{host}:{port}/v1/chat/completions", json=CHAT
                ) as r:
                    async for _ in r.aiter_bytes():
                        shutdown.set()


async def test_chunks_arriving_in_one_upstream_read_keep_their_boundaries() -> None:
    pieces = [b"data: 1\n\n", b"data: \xe4\xbd", b"\xa0\n\n", b"data: [DONE]\n\n"]

    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        # Head, every chunk and the last-chunk in one write: one read on the proxy's side.
        await stream.send(SSE_HEAD + b"".join(chunk(p) for p in pieces) + LAST_CHUNK)

    async with deadline(10) as tg:
        upstream, _ = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream)
        raw = await raw_exchange(base, b"GET / HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n")
    assert parse_chunked(raw.partition(b"\r\n\r\n")[2]) == (pieces, True)


async def test_an_event_stream_with_a_content_length_gets_nothing_inserted() -> None:
    body = b"data: one\n\n"

    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n"
            % (len(body) * 2)
            + body
        )
        await anyio.sleep(0.3)  # idle long enough for several heartbeats
        await stream.send(body)

    async with deadline(10) as tg:
        upstream, _ = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream, heartbeat=0.05)
        async with httpx.AsyncClient() as client:
            response = await client.get(base + "/")
    assert response.status_code == 200
    assert response.content == body * 2  # exactly the declared bytes, no heartbeat inside


@pytest.mark.parametrize(("version", "passed_on"), [(b"1.1", True), (b"1.0", False)])
async def test_informational_responses_reach_http_1_1_clients_before_the_final_one(
    version: bytes, passed_on: bool
) -> None:
    """RFC 9110 15.2: a proxy forwards 1xx responses; an HTTP/1.0 client must get none."""
    hints = b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"

    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(hints)
        await anyio.sleep(0.05)
        await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    async with deadline(10) as tg:
        upstream, _ = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream)
        request = b"GET / HTTP/" + version + b"\r\nHost: x\r\nConnection: close\r\n\r\n"
        raw = await raw_exchange(base, request)
    if passed_on:
        first, _, rest = raw.partition(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 103 Early Hints\r\n")
        assert b"\r\nlink: </style.css>; rel=preload" in first
        assert b"\r\nvia: 1.1 ssekit" in first
        assert rest.startswith(b"HTTP/1.1 200 OK\r\n")
    else:
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b" 103 " not in raw
    assert raw.endswith(b"\r\n\r\nok")


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",  # never asked for
        b"HTTP/1.1 099 Low\r\n\r\n",  # not a status code: neither 1xx nor final
    ],
)
async def test_an_upgrade_or_a_status_below_100_is_a_bad_gateway(head: bytes) -> None:
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(head)

    async with deadline(10) as tg:
        upstream, _ = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream)
        raw = await raw_exchange(base, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 502 ")
    assert head[9:12] in raw  # the message names the status


async def test_a_head_request_gets_the_head_alone_and_both_connections_carry_on() -> None:
    """A HEAD answer's Content-Length describes a body that never comes (RFC 9110 9.3.2):
    the proxy must not wait for it on either side."""

    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
        request = await read_request(stream)  # the next request, on the same connection
        seen.requests.append(request)
        await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
        await wait_closed(stream, seen)

    async with deadline(10) as tg:
        upstream, seen = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream)
        host, port = base.removeprefix("http://").split(":")
        async with await anyio.connect_tcp(host, int(port)) as client:
            await client.send(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += await client.receive()
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"\r\ncontent-length: 5\r\n" in head
            assert head.endswith(b"\r\n\r\n")  # and nothing after it
            await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"hello"):
                answer += await client.receive()
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert [r.split(b" ")[0] for r in seen.requests] == [b"HEAD", b"GET"]
    assert seen.connections == 1  # the upstream connection was kept for the GET
