"""The client over real loopback sockets: reconnection, Last-Event-ID, errors, cancellation."""

from __future__ import annotations

import itertools
import re
import time
from pathlib import Path

import anyio
import pytest
from _servers import (
    LAST_CHUNK,
    SSE_HEAD,
    Script,
    Seen,
    chunk,
    deadline,
    start_mock,
    start_proxy,
    start_upstream,
    wait_closed,
)

import ssekit
from ssekit.client import RetryPolicy, chat_text, connect, listen, stream_sync
from ssekit.proxy._mock import mock_text

# Every test on both HTTP/1.1 engines: the proxy and mock _servers starts run on it.
pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("http_engine")]
# min_delay=0: no floor under the 50 ms (the storm tests check the floor).
FAST = RetryPolicy(initial_retry=50, jitter=0, max_retries=5, min_delay=0)


async def collect(url: str, n: int, **options: object) -> list[ssekit.Event]:
    events = []
    async for event in connect(url, **options):  # type: ignore[arg-type]
        if event.event == "message":
            events.append(event)
        if len(events) == n:
            break
    return events


@pytest.mark.parametrize("through_proxy", [False, True])
async def test_reconnects_after_a_cut_and_resumes_from_last_event_id(through_proxy: bool) -> None:
    async with deadline(20) as tg:
        base = await start_mock(tg, delay=0)
        if through_proxy:
            base = await start_proxy(tg, base)
        url = base + "/v1/events?count=7&cut_after=3&retry=20"
        events = await collect(url, 7, policy=FAST)
    assert [e.id for e in events] == ["1", "2", "3", "4", "5", "6", "7"]
    assert events[4].data == "event 5 你好"


async def test_last_event_id_header_reaches_the_server_on_reconnection() -> None:
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD + chunk(b"retry: 10\nid: abc\ndata: one\n\n"))
        # then cut (no last chunk)

    async with deadline(20) as tg:
        upstream, seen = await start_upstream(tg, script)
        events = await collect(upstream + "/stream", 2, policy=FAST)
    assert [e.data for e in events] == ["one", "one"]
    assert seen.header(b"last-event-id", 0) is None
    assert seen.header(b"last-event-id", 1) == b"abc"
    assert seen.header(b"accept", 1) == b"text/event-stream"
    assert seen.header(b"cache-control", 0) == b"no-cache"


async def test_204_stops_without_reconnecting() -> None:
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(b"HTTP/1.1 204 No Content\r\n\r\n")

    async with deadline(10) as tg:
        upstream, seen = await start_upstream(tg, script)
        events = [e async for e in connect(upstream, policy=FAST)]
    assert events == []
    assert seen.connections == 1


@pytest.mark.parametrize(
    ("head", "body", "status", "content_type"),
    [
        (
            b"HTTP/1.1 503 Busy\r\ncontent-type: application/json",
            b'{"error":"later"}',
            503,
            "application/json",
        ),
        (b"HTTP/1.1 200 OK\r\ncontent-type: text/html", b"<html>", 200, "text/html"),
    ],
)
async def test_bad_status_or_type_fails_with_the_body_and_no_retry(
    head: bytes, body: bytes, status: int, content_type: str
) -> None:
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(head + b"\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))

    async with deadline(10) as tg:
        upstream, seen = await start_upstream(tg, script)
        with pytest.raises(ssekit.ResponseError) as info:
            [e async for e in connect(upstream, policy=FAST)]
    assert (info.value.status, info.value.content_type) == (status, content_type)
    assert info.value.body == body.decode()
    assert seen.connections == 1


async def test_a_status_the_policy_retries_is_retried_and_the_stream_opens() -> None:
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        if seen.connections == 1:
            body = b'{"error":"overloaded"}'
            await stream.send(
                b"HTTP/1.1 503 Busy\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )
        else:
            await stream.send(SSE_HEAD + chunk(b"id: 1\ndata: one\n\n") + LAST_CHUNK)

    policy = RetryPolicy(
        initial_retry=10, jitter=0, max_retries=2, retry_statuses={503}, min_delay=0
    )
    async with deadline(10) as tg:
        upstream, seen = await start_upstream(tg, script)
        events = await collect(upstream, 1, policy=policy)
    assert [(e.id, e.data) for e in events] == [("1", "one")]
    assert seen.connections == 2


async def test_unreachable_server_gives_up_after_max_retries() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()
    policy = RetryPolicy(initial_retry=10, jitter=0, max_retries=3, min_delay=0)
    with anyio.fail_after(10), pytest.raises(ssekit.RetriesExhausted) as info:
        [e async for e in connect(f"http://127.0.0.1:{port}/", policy=policy)]
    assert info.value.reconnections == 3
    assert isinstance(info.value.__cause__, ssekit.UpstreamError)
    assert info.value.__cause__.status == 502  # connecting failed: a bad gateway, no timeout


async def test_idle_timeout_counts_as_a_network_error() -> None:
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD)  # then silence: no event resets the failure count
        await wait_closed(stream, seen)

    async with deadline(10) as tg:
        upstream, seen = await start_upstream(tg, script)
        policy = RetryPolicy(initial_retry=10, jitter=0, max_retries=1, min_delay=0)
        started = time.monotonic()
        with pytest.raises(ssekit.RetriesExhausted) as info:
            [e async for e in connect(upstream, policy=policy, idle_timeout=0.2)]
    assert isinstance(info.value.__cause__, ssekit.UpstreamError)
    assert info.value.__cause__.status == 504  # a timeout
    assert time.monotonic() - started >= 0.4  # two connections, each idle 0.2 s
    assert seen.connections == 2


async def test_leaving_the_async_with_block_closes_the_connection_at_once() -> None:
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD + chunk(b"data: hi\n\n"))
        await wait_closed(stream, seen)

    async with deadline(10) as tg:
        upstream, seen = await start_upstream(tg, script)
        async with connect(upstream) as events:
            async for event in events:
                assert event.data == "hi"
                break
        # ``events`` is still referenced: only the block's exit can have closed it.
        with anyio.fail_after(2):
            while not seen.closed_at:
                await anyio.sleep(0.005)
        assert events is not None


async def test_an_error_inside_the_block_also_closes_the_connection() -> None:
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD + chunk(b"data: hi\n\n"))
        await wait_closed(stream, seen)

    async with deadline(10) as tg:
        upstream, seen = await start_upstream(tg, script)
        with pytest.raises(KeyError):
            async with connect(upstream) as events:
                async for _ in events:
                    raise KeyError("handler failed")
        with anyio.fail_after(2):
            while not seen.closed_at:
                await anyio.sleep(0.005)


async def test_cancellation_closes_the_connection() -> None:
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD)
        await wait_closed(stream, seen)

    async with deadline(10) as tg:
        upstream, seen = await start_upstream(tg, script)
        with anyio.move_on_after(0.2):
            [e async for e in connect(upstream)]
        with anyio.fail_after(2):
            while not seen.closed_at:
                await anyio.sleep(0.005)


async def test_listener_gets_open_events_and_closed() -> None:
    calls: list[str] = []

    class Listener:
        async def on_open(self) -> None:
            calls.append("open")

        async def on_event(self, event: ssekit.Event) -> None:
            calls.append(event.data)

        async def on_closed(self) -> None:
            calls.append("closed")

        async def on_failure(self, error: Exception) -> None:
            calls.append(f"failure: {type(error).__name__}")

    async with deadline(20) as tg:
        mock = await start_mock(tg, tokens=2, delay=0)
        await listen(
            mock + "/v1/chat/completions",
            Listener(),
            method="POST",
            json={"stream": True, "messages": []},
        )
        await listen(mock + "/nowhere", Listener())
    assert calls[0] == "open"
    assert calls[-2:] == ["closed", "failure: ResponseError"]
    assert "[DONE]" in calls


async def test_openai_text_through_the_proxy_and_a_post_cut_is_not_replayed() -> None:
    async with deadline(20) as tg:
        mock = await start_mock(tg, tokens=9, delay=0)
        base = await start_proxy(tg, mock)
        body = {"model": "ssekit-mock", "messages": [{"role": "user", "content": "hi"}]}
        text = await chat_text(
            base + "/v1/chat/completions", body, headers={"Authorization": "Bearer x"}
        )
    assert text == mock_text(9)


def test_sync_wrapper_for_scripts() -> None:
    async def main() -> list[str]:
        async with deadline(20) as tg:
            mock = await start_mock(tg, delay=0)

            def script() -> list[str]:
                ids = []
                for event in stream_sync(mock + "/v1/events?count=3", policy=FAST):
                    ids.append(event.id)
                    if event.id == "3":
                        break
                return ids

            return await anyio.to_thread.run_sync(script)

    assert anyio.run(main) == ["0", "1", "2", "3"]


def readme_client_example() -> str:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    snippets = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    return next(code for code in snippets if "from ssekit.client import" in code)


async def test_readme_client_example_runs() -> None:
    namespace: dict[str, object] = {}
    exec(readme_client_example(), namespace)
    async with deadline(20) as tg:
        mock = await start_mock(tg, delay=0)
        seen = await namespace["main"](mock + "/v1/events?count=9&cut_after=2&retry=10")  # type: ignore[operator]
    assert seen == ["hello", "event 1 你好", "event 2 你好", "hello"]


async def test_https_with_a_private_ca_through_a_connect_proxy(tmp_path: Path) -> None:
    import ssl

    import trustme
    from _servers import start_connect_proxy

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    ca_file = str(tmp_path / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)

    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD + chunk(b"data: secret\n\n") + b"0\r\n\r\n")

    targets: list[bytes] = []
    async with deadline(20) as tg:
        upstream, seen = await start_upstream(tg, script, tls=server_context)
        connect_proxy = await start_connect_proxy(tg, targets)
        events = await collect(upstream + "/s", 1, ca_file=ca_file, proxy=connect_proxy)
        with pytest.raises(ssekit.RetriesExhausted) as info:
            await collect(upstream + "/s", 1, policy=RetryPolicy(max_retries=0))
    assert isinstance(info.value.__cause__, ssekit.UpstreamError)
    assert isinstance(info.value.__cause__.__cause__, ssl.SSLCertVerificationError)
    assert events == [ssekit.Event(data="secret")]
    assert targets == [upstream.removeprefix("https://").encode()]
    assert seen.header(b"authorization", 0) is None


async def test_comments_before_a_cut_are_not_progress_so_max_retries_holds() -> None:
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD + chunk(b": ping\n\n") + chunk(b"retry: 5\n\n"))
        # then cut: no event was ever dispatched

    async with deadline(20) as tg:
        upstream, seen = await start_upstream(tg, script)
        policy = RetryPolicy(initial_retry=5, jitter=0, max_retries=3, min_delay=0)
        with pytest.raises(ssekit.RetriesExhausted) as info:
            [e async for e in connect(upstream, policy=policy)]
    assert info.value.reconnections == 3
    assert seen.connections == 4  # the first connection and three retries


async def test_last_event_id_survives_a_connection_that_only_sent_a_comment() -> None:
    bodies = [b"retry: 5\nid: 7\ndata: one\n\n", b": just a comment\n\n", b"data: two\n\n"]

    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD + chunk(bodies[min(seen.connections, 3) - 1]))

    async with deadline(20) as tg:
        upstream, seen = await start_upstream(tg, script)
        events = await collect(upstream, 2, policy=FAST)
    assert events == [ssekit.Event(data="one", id="7", retry=5), ssekit.Event(data="two", id="7")]
    assert [seen.header(b"last-event-id", i) for i in range(3)] == [None, b"7", b"7"]


def redirecting(routes: dict[bytes, bytes]) -> Script:
    """A script answering each request path with its head (a redirect) or an event stream."""

    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        path = seen.requests[-1].split(b" ")[1]
        if path in routes:
            await stream.send(routes[path] + b"\r\ncontent-length: 0\r\n\r\n")
            await wait_closed(stream, seen)
        else:
            await stream.send(SSE_HEAD + chunk(b"data: at " + path + b"\n\n") + LAST_CHUNK)

    return script


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_followed_as_a_browser_does(status: int) -> None:
    moved = b"HTTP/1.1 %d Moved\r\nlocation: /new?x=1" % status
    async with deadline(20) as tg:
        upstream, seen = await start_upstream(tg, redirecting({b"/old": moved}))
        events = await collect(upstream + "/old", 1, policy=FAST)
    assert events == [ssekit.Event(data="at /new?x=1")]
    assert seen.requests[1].startswith(b"GET /new?x=1 HTTP/1.1")
    assert seen.header(b"accept", 1) == b"text/event-stream"


@pytest.mark.parametrize(("status", "method"), [(303, b"GET"), (307, b"POST"), (308, b"POST")])
async def test_a_303_turns_a_post_into_a_get_and_307_308_keep_it(
    status: int, method: bytes
) -> None:
    moved = b"HTTP/1.1 %d See Other\r\nlocation: http://127.0.0.1:%%d/answer" % status
    async with deadline(20) as tg:
        routes: dict[bytes, bytes] = {}
        upstream, seen = await start_upstream(tg, redirecting(routes))
        routes[b"/ask"] = moved % int(upstream.rpartition(":")[2])
        events = [
            e async for e in connect(upstream + "/ask", method="POST", json={"q": 1}, policy=FAST)
        ]
    assert events == [ssekit.Event(data="at /answer")]
    assert seen.requests[1].startswith(method + b" /answer ")
    if method == b"GET":
        assert seen.header(b"content-type", 1) is None
        assert seen.requests[1].endswith(b"\r\n\r\n")
    else:
        assert seen.requests[1].endswith(b'{"q": 1}')


async def test_a_cross_origin_redirect_drops_the_authorization_header() -> None:
    async with deadline(20) as tg:
        target, seen_target = await start_upstream(tg, redirecting({}))
        moved = b"HTTP/1.1 302 Found\r\nlocation: " + target.encode() + b"/there"
        source, seen_source = await start_upstream(tg, redirecting({b"/here": moved}))
        events = await collect(
            source + "/here", 1, policy=FAST, headers={"Authorization": "Bearer secret"}
        )
    assert events == [ssekit.Event(data="at /there")]
    assert seen_source.header(b"authorization", 0) == b"Bearer secret"
    assert seen_target.header(b"authorization", 0) is None


async def test_a_redirect_loop_fails_after_a_bounded_number_of_hops() -> None:
    loop = b"HTTP/1.1 307 Again\r\nlocation: /loop"
    async with deadline(20) as tg:
        upstream, seen = await start_upstream(tg, redirecting({b"/loop": loop}))
        with pytest.raises(ssekit.ResponseError) as info:
            [e async for e in connect(upstream + "/loop", policy=FAST)]
    assert info.value.status == 307  # the last redirect, not followed
    assert seen.connections == 21  # the request and fetch's limit of 20 redirects


def storm(times: list[float]) -> Script:
    """A server that answers retry: 0, one event, and closes, recording when each came."""

    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        times.append(time.monotonic())
        await stream.send(SSE_HEAD + chunk(b"retry: 0\ndata: storm\n\n") + LAST_CHUNK)

    return script


async def read_for(seconds: float, url: str, **options: object) -> int:
    """Read events from ``url`` for ``seconds``; how many came."""
    events = 0
    with anyio.move_on_after(seconds):
        async with connect(url, **options) as stream:  # type: ignore[arg-type]
            async for _ in stream:
                events += 1
    return events


async def test_a_retry_0_storm_is_held_to_the_default_floor() -> None:
    # It used to reconnect about 1,850 times a second: each connection brought an
    # event, so the backoff never grew, and 0 ms doubled stays 0.
    times: list[float] = []
    async with deadline(20) as tg:
        upstream, seen = await start_upstream(tg, storm(times))
        events = await read_for(1.2, upstream)
    # The first connection, then one each 500 ms at most (the default floor).
    assert 2 <= seen.connections <= 3
    assert events == seen.connections
    assert all(b - a >= 0.5 - 0.01 for a, b in itertools.pairwise(times))


async def test_a_storm_without_a_floor_is_held_to_the_reconnections_per_window() -> None:
    times: list[float] = []
    policy = RetryPolicy(min_delay=0, max_reconnects=4, reconnect_window=0.5, max_retries=1)
    async with deadline(20) as tg:
        upstream, seen = await start_upstream(tg, storm(times))
        await read_for(2.0, upstream, policy=policy)
    # At most 4 reconnections in any 0.5 s. The times are the server's, when each connection
    # arrived: 100 ms of slack for a loaded machine's scheduling (a storm without the bound
    # makes hundreds a second).
    reconnections = times[1:]
    assert all(b - a >= 0.5 - 0.1 for a, b in zip(reconnections, reconnections[4:], strict=False))
    assert 5 <= seen.connections <= 1 + 4 * 5  # the first, then four full windows and a part


CREDENTIALS = {
    "Authorization": "Bearer sk-secret",
    "Proxy-Authorization": "Basic cHJveHk6c2VjcmV0",
    "Cookie": "session=s3cret",
    "api-key": "azure-secret",
    "X-API-Key": "anthropic-secret",
    "X-Session": "listed-by-the-caller",
}
PLAIN = {"X-Request-Id": "42"}


def header_names(request: bytes) -> dict[str, str]:
    """The header fields of a request head, names in lower case."""
    lines = request.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]
    fields = (line.decode().partition(":") for line in lines)
    return {name.strip().lower(): value.strip() for name, _, value in fields}


async def test_a_redirect_to_another_port_carries_no_credentials() -> None:
    async with deadline(20) as tg:
        target, seen_target = await start_upstream(tg, redirecting({}))
        moved = b"HTTP/1.1 307 Moved\r\nlocation: " + target.encode() + b"/there"
        source, seen_source = await start_upstream(tg, redirecting({b"/here": moved}))
        events = await collect(
            source + "/here",
            1,
            policy=FAST,
            headers={**CREDENTIALS, **PLAIN},
            credential_headers=["X-Session"],
        )
    assert events == [ssekit.Event(data="at /there")]
    sent = header_names(seen_source.requests[0])
    assert {name: sent[name.lower()] for name in CREDENTIALS} == CREDENTIALS
    assert header_names(seen_target.requests[0]) == {
        "host": target.removeprefix("http://"),
        "accept": "text/event-stream",
        "cache-control": "no-cache",
        "x-request-id": "42",
    }


async def test_a_redirect_to_another_host_carries_no_credentials() -> None:
    routes: dict[bytes, bytes] = {}
    async with deadline(20) as tg:
        upstream, seen = await start_upstream(tg, redirecting(routes))
        port = upstream.rpartition(":")[2].encode()
        routes[b"/here"] = b"HTTP/1.1 302 Found\r\nlocation: http://localhost:%s/there" % port
        events = await collect(
            upstream + "/here",
            1,
            policy=FAST,
            headers={**CREDENTIALS, **PLAIN},
            credential_headers=["x-session"],
        )
    assert events == [ssekit.Event(data="at /there")]
    assert header_names(seen.requests[1]) == {
        "host": "localhost:" + port.decode(),
        "accept": "text/event-stream",
        "cache-control": "no-cache",
        "x-request-id": "42",
    }


async def test_a_same_origin_redirect_keeps_every_header() -> None:
    moved = b"HTTP/1.1 302 Found\r\nlocation: /there"
    async with deadline(20) as tg:
        upstream, seen = await start_upstream(tg, redirecting({b"/here": moved}))
        events = await collect(
            upstream + "/here",
            1,
            policy=FAST,
            headers={**CREDENTIALS, **PLAIN},
            credential_headers=["x-session"],
        )
    assert events == [ssekit.Event(data="at /there")]
    assert header_names(seen.requests[1]) == {
        "host": upstream.removeprefix("http://"),
        "accept": "text/event-stream",
        "cache-control": "no-cache",
        **{name.lower(): value for name, value in {**CREDENTIALS, **PLAIN}.items()},
    }


def test_credential_headers_is_a_collection_of_names() -> None:
    with pytest.raises(ssekit.InputTypeError) as info:
        connect("http://127.0.0.1:9/", credential_headers="x-session")
    assert (info.value.argument, info.value.got) == ("credential_headers", "str")
