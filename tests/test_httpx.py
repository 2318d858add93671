"""ssekit.httpx with real httpx clients against a real uvicorn server on 127.0.0.1.

The server is a bare ASGI app writing scripted bytes, so every case (a cut, a retry field,
a JSON error, a 204) is exactly what a real server sends, byte for byte.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import anyio
import httpx
import pytest
from _uvicorn import Running, reserve_port, running, wait_for

import ssekit
from ssekit.httpx import EventSource, RetryPolicy, aconnect_sse, connect_sse

pytestmark = [pytest.mark.timeout(60), pytest.mark.anyio]

# min_delay=0: no floor under the 10 ms (the storm tests below check the floor).
FAST = RetryPolicy(initial_retry=10, jitter=0.0, max_retries=3, min_delay=0)
# FAST, also retrying a 503 (which the spec, and so the default policy, does not retry).
FAST_503 = RetryPolicy(
    initial_retry=10, jitter=0.0, max_retries=3, retry_statuses={503}, min_delay=0
)
OPENAI_ERROR = {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}
# Blocks httpx-sse gets wrong: a data-less block after an id, a comment block, retry "+5".
SPEC_BODY = (
    b"\xef\xbb\xbfid: 1\ndata: first\n\n"
    b": keep-alive\n\n"
    b"id: 2\n\n"
    b"event: update\nretry: +5\n\n"
    b"retry: 1500\ndata: second\r\n\r\n"
    b"data: cut off"
)


class Log:
    """What the server saw: each request's method, path, headers, body; streams closed."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.closed: list[float] = []
        self.attempts: dict[str, int] = {}
        self.storm: list[float] = []  # when each /storm request came


async def _body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def make_app(log: Log) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        body = await _body(receive)
        log.requests.append((scope["method"], scope["path"], headers, body))
        path = scope["path"]

        async def start(status: int, content_type: str) -> None:
            head = [(b"content-type", content_type.encode())] if content_type else []
            await send({"type": "http.response.start", "status": status, "headers": head})

        async def chunk(data: bytes, more: bool = True) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": more})

        if path == "/events":
            # Numbered events from Last-Event-ID on, at most `per` per connection;
            # cut_after=N cuts the first connection after event N.
            first = int(headers.get("last-event-id", "0")) + 1
            await start(200, "text/event-stream")
            if "retry" in query:
                await chunk(b"retry: %s\n\n" % query["retry"].encode())
            last = min(int(query.get("count", "5")), first - 1 + int(query.get("per", "1000")))
            for n in range(first, last + 1):
                await chunk(b"id: %d\ndata: event %d\n\n" % (n, n))
                if "last-event-id" not in headers and n == int(query.get("cut_after", "0")):
                    raise RuntimeError("cut on purpose: the body is left unterminated")
            await chunk(b"", more=False)
        elif path == "/flaky":
            # 503 (overloaded, as a load balancer says it) for the first `fails` requests
            # of each `key`, then two events.
            key = query.get("key", "")
            log.attempts[key] = log.attempts.get(key, 0) + 1
            if log.attempts[key] <= int(query.get("fails", "1")):
                await start(503, "application/json")
                await chunk(b'{"error": "overloaded"}', more=False)
            else:
                await start(200, "text/event-stream")
                await chunk(b"id: 1\ndata: one\n\nid: 2\ndata: two\n\n", more=False)
        elif path == "/spec":
            await start(200, "text/event-stream; charset=utf-8")
            for i in range(0, len(SPEC_BODY), 7):  # 7-byte reads: the BOM and CRLF get split
                await chunk(SPEC_BODY[i : i + 7])
            await chunk(b"", more=False)
        elif path == "/json-error":
            await start(401, "application/json")
            await chunk(json.dumps(OPENAI_ERROR).encode(), more=False)
        elif path == "/html":
            await start(200, "text/html")
            await chunk(b"<html>not a stream</html>", more=False)
        elif path == "/no-content":
            await start(204, "")
            await chunk(b"", more=False)
        elif path == "/redirect":
            # A redirect to ?to= (a path or a URL; itself by default, a loop) with
            # ?status= (307 by default).
            location = query.get("to", "/redirect").encode()
            status = int(query.get("status", "307"))
            head = [(b"location", location), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": status, "headers": head})
            await chunk(b"", more=False)
        elif path == "/storm":
            # A reconnect storm's server: retry: 0, one event, the end of the body.
            log.storm.append(time.monotonic())
            await start(200, "text/event-stream")
            await chunk(b"retry: 0\ndata: storm\n\n", more=False)
        elif path == "/echo":
            await start(200, "text/event-stream")
            await chunk(b"data: %s\n\n" % body, more=False)
        elif path == "/endless":
            await start(200, "text/event-stream")
            async with anyio.create_task_group() as tasks:

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    log.closed.append(time.monotonic())
                    tasks.cancel_scope.cancel()

                tasks.start_soon(watch)
                for n in range(2_000):
                    await chunk(b"data: tick %d\n\n" % n)
                    await anyio.sleep(0.005)

    return app


@pytest.fixture
def server() -> Iterator[tuple[Running, Log]]:
    log = Log()
    with running(make_app(log)) as state:
        yield state, log


def test_iter_sse_yields_ssekit_events_with_default_headers(server: tuple[Running, Log]) -> None:
    state, log = server
    with httpx.Client(base_url=state.url) as client:
        with connect_sse(client, "GET", "/events", params={"count": "3"}) as source:
            assert isinstance(source, EventSource)
            assert source.response.status_code == 200
            events = list(source.iter_sse())
    assert events == [ssekit.Event(data=f"event {n}", id=str(n)) for n in (1, 2, 3)]
    _, path, headers, _ = log.requests[0]
    assert path == "/events"
    assert headers["accept"] == "text/event-stream"
    assert headers["cache-control"] == "no-store"


def test_given_headers_win_and_the_callers_dict_is_not_changed(
    server: tuple[Running, Log],
) -> None:
    state, log = server
    mine = {"Accept": "text/event-stream, */*", "Authorization": "Bearer sk-test"}
    with httpx.Client(base_url=state.url) as client:
        with connect_sse(client, "GET", "/events", headers=mine) as source:
            list(source.iter_sse())
    headers = log.requests[0][2]
    assert headers["accept"] == "text/event-stream, */*"
    assert headers["authorization"] == "Bearer sk-test"
    assert headers["cache-control"] == "no-store"
    assert mine == {"Accept": "text/event-stream, */*", "Authorization": "Bearer sk-test"}


def test_events_follow_the_spec_where_httpx_sse_does_not(server: tuple[Running, Log]) -> None:
    state, _ = server
    with httpx.Client(base_url=state.url) as client:
        with connect_sse(client, "GET", "/spec") as source:
            events = list(source.iter_sse())
    # The BOM is stripped; blocks without data dispatch nothing; "+5" is no retry; the
    # unterminated last event is dropped; CRLF ends lines.
    assert events == [
        ssekit.Event(data="first", id="1"),
        ssekit.Event(data="second", id="2", retry=1500),
    ]


def test_json_error_raises_response_error_with_status_type_and_body(
    server: tuple[Running, Log],
) -> None:
    state, _ = server
    with httpx.Client(base_url=state.url) as client:
        with connect_sse(client, "POST", "/json-error", json={"model": "x"}) as source:
            with pytest.raises(ssekit.ResponseError) as info:
                list(source.iter_sse())
    error = info.value
    assert error.status == 401
    assert error.content_type == "application/json"
    assert json.loads(error.body) == OPENAI_ERROR


async def test_async_wrong_content_type_raises_response_error(
    server: tuple[Running, Log],
) -> None:
    state, _ = server
    async with httpx.AsyncClient(base_url=state.url) as client:
        async with aconnect_sse(client, "GET", "/html") as source:
            with pytest.raises(ssekit.ResponseError) as info:
                [event async for event in source.aiter_sse()]
    assert (info.value.status, info.value.content_type) == (200, "text/html")
    assert info.value.body == "<html>not a stream</html>"


def test_204_yields_nothing_and_does_not_reconnect(server: tuple[Running, Log]) -> None:
    state, log = server
    with httpx.Client(base_url=state.url) as client:
        with connect_sse(client, "GET", "/no-content") as source:
            assert list(source.iter_sse(reconnect=FAST)) == []
    assert len(log.requests) == 1


async def test_async_post_sends_json_and_reads_the_events(server: tuple[Running, Log]) -> None:
    state, log = server
    async with httpx.AsyncClient(base_url=state.url) as client:
        async with aconnect_sse(client, "POST", "/echo", json={"q": "你好"}) as source:
            events = [event async for event in source.aiter_sse()]
    assert [event.json() for event in events] == [{"q": "你好"}]
    assert log.requests[0][0] == "POST"


def test_leaving_the_with_mid_stream_closes_the_response_at_once(
    server: tuple[Running, Log],
) -> None:
    state, log = server
    with httpx.Client(base_url=state.url) as client:
        with connect_sse(client, "GET", "/endless") as source:
            for event in source.iter_sse():
                if event.data == "tick 2":
                    break
            left = time.monotonic()
        assert source.response.is_closed
        wait_for(lambda: log.closed, 2, "the server never saw the client leave")
    assert log.closed[0] - left < 0.5


async def test_async_leaving_the_with_mid_stream_closes_the_response_at_once(
    server: tuple[Running, Log],
) -> None:
    state, log = server
    async with httpx.AsyncClient(base_url=state.url) as client:
        async with aconnect_sse(client, "GET", "/endless") as source:
            async for event in source.aiter_sse():
                if event.data == "tick 2":
                    break  # the generator is left suspended: the block must close anyway
            left = time.monotonic()
        assert source.response.is_closed
        with anyio.fail_after(2):
            while not log.closed:
                await anyio.sleep(0.005)
    assert log.closed[0] - left < 0.5


def test_without_reconnect_a_cut_raises_httpx_error(server: tuple[Running, Log]) -> None:
    state, log = server
    seen = []
    with httpx.Client(base_url=state.url) as client:
        with connect_sse(client, "GET", "/events", params={"cut_after": "2"}) as source:
            with pytest.raises(httpx.RemoteProtocolError):
                seen.extend(event.data for event in source.iter_sse())
    assert seen == ["event 1", "event 2"]
    assert len(log.requests) == 1


def test_reconnect_resumes_with_last_event_id_after_a_cut(server: tuple[Running, Log]) -> None:
    state, log = server
    params = {"cut_after": "2", "count": "4", "retry": "20"}
    with httpx.Client(base_url=state.url) as client:
        with connect_sse(client, "GET", "/events", params=params) as source:
            ids = []
            for event in source.iter_sse(reconnect=RetryPolicy(max_retries=2, jitter=0.0)):
                ids.append(event.id)
                if event.id == "4":
                    break
    assert ids == ["1", "2", "3", "4"]
    assert "last-event-id" not in log.requests[0][2]
    assert log.requests[1][2]["last-event-id"] == "2"
    assert log.requests[1][2]["accept"] == "text/event-stream"


async def test_async_reconnect_waits_the_retry_field_time(server: tuple[Running, Log]) -> None:
    state, log = server
    # The server's retry: 300 replaces the policy's 10 ms; the end of a GET stream reconnects.
    params = {"count": "2", "per": "1", "retry": "300"}
    times = []
    async with httpx.AsyncClient(base_url=state.url) as client:
        async with aconnect_sse(client, "GET", "/events", params=params) as source:
            async for _event in source.aiter_sse(reconnect=FAST):
                times.append(time.monotonic())
                if len(times) == 2:
                    break
    assert len(log.requests) == 2
    assert log.requests[1][2]["last-event-id"] == "1"
    assert times[1] - times[0] >= 0.3


def test_post_is_not_replayed_unless_asked(server: tuple[Running, Log]) -> None:
    state, log = server
    with httpx.Client(base_url=state.url) as client:
        with connect_sse(client, "POST", "/echo", json={"n": 1}) as source:
            assert [e.data for e in source.iter_sse(reconnect=FAST)] == ['{"n":1}']
        assert len(log.requests) == 1
        replay = RetryPolicy(
            initial_retry=10, jitter=0.0, max_retries=1, replay_post=True, min_delay=0
        )
        with connect_sse(client, "POST", "/echo", json={"n": 2}) as source:
            data = []
            for event in source.iter_sse(reconnect=replay):
                data.append(event.data)
                if len(data) == 2:
                    break
    assert data == ['{"n":2}', '{"n":2}']
    assert [method for method, *_ in log.requests] == ["POST"] * 3
    assert log.requests[2][3] == b'{"n":2}'


def test_reconnect_gives_up_with_retries_exhausted(server: tuple[Running, Log]) -> None:
    state, log = server
    with httpx.Client(base_url=state.url) as client:
        with connect_sse(client, "GET", "/no-such-thing") as source:
            # A 404 is not retried: the EventSource fails the connection.
            with pytest.raises(ssekit.ResponseError):
                list(source.iter_sse(reconnect=FAST))
    assert len(log.requests) == 1
    with httpx.Client() as client:
        with connect_sse(client, "GET", f"{state.url}/events", params={"count": "0"}) as source:
            with pytest.raises(ssekit.RetriesExhausted):
                list(source.iter_sse(reconnect=FAST))
    # The first connection and max_retries=3 reconnections, none with an event.
    assert len(log.requests) == 1 + 4


def test_reconnect_needs_connect_sse() -> None:
    response = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=b"")
    response.request = httpx.Request("GET", "http://127.0.0.1:9/")
    source = EventSource(response)
    assert list(source.iter_sse()) == []
    with pytest.raises(TypeError):
        list(EventSource(response).iter_sse(reconnect=FAST))


def test_first_request_503_is_retried_under_connect_sse_policy(
    server: tuple[Running, Log],
) -> None:
    state, log = server
    with httpx.Client(base_url=state.url) as client:
        params = {"fails": "2", "key": "sync"}
        with connect_sse(client, "GET", "/flaky", params=params, reconnect=FAST_503) as source:
            assert source.response.status_code == 200
            events = []
            for event in source.iter_sse():
                events.append(event)
                if event.id == "2":
                    break
        # Without 503 among the policy's statuses, the spec's rule holds: no retry.
        params = {"fails": "1", "key": "spec"}
        with connect_sse(client, "GET", "/flaky", params=params, reconnect=FAST) as source:
            with pytest.raises(ssekit.ResponseError) as info:
                list(source.iter_sse())
    assert events == [ssekit.Event(data="one", id="1"), ssekit.Event(data="two", id="2")]
    assert log.attempts == {"sync": 3, "spec": 1}
    assert info.value.status == 503
    assert info.value.body == '{"error": "overloaded"}'


async def test_async_first_request_refused_is_retried_until_the_server_is_up() -> None:
    log = Log()
    sock = reserve_port()  # bound, not listening: connections are refused
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/events?count=2"
    policy = RetryPolicy(initial_retry=50, backoff=1, jitter=0.0, max_retries=40, min_delay=0)
    done = threading.Event()

    def serve_later() -> None:
        time.sleep(0.3)
        with running(make_app(log), sock=sock):
            done.wait(15)

    started = time.monotonic()
    server = threading.Thread(target=serve_later)
    server.start()
    try:
        with anyio.fail_after(10):
            async with httpx.AsyncClient() as client:
                async with aconnect_sse(client, "GET", url, reconnect=policy) as source:
                    # Nothing listened for the first 0.3 s: the attempts until then were
                    # refused. (Not "the server is up": uvicorn serves a moment before
                    # ``running`` returns.)
                    assert time.monotonic() - started >= 0.3
                    ids = []
                    async for event in source.aiter_sse():
                        ids.append(event.id)
                        if len(ids) == 2:
                            break
    finally:
        done.set()
        server.join(15)
    assert ids == ["1", "2"]
    assert len(log.requests) == 1


def test_without_reconnect_a_refused_connection_raises_at_connect() -> None:
    sock = reserve_port()
    with sock, httpx.Client() as client:
        with pytest.raises(httpx.ConnectError):
            with connect_sse(client, "GET", f"http://127.0.0.1:{sock.getsockname()[1]}/"):
                pass


def test_first_request_of_a_post_is_not_replayed_unless_asked(
    server: tuple[Running, Log],
) -> None:
    state, log = server
    with httpx.Client(base_url=state.url) as client:
        params = {"key": "post"}
        with pytest.raises(ssekit.ClientError) as info:
            with connect_sse(client, "POST", "/flaky", params=params, json={}, reconnect=FAST_503):
                pass
        assert log.attempts == {"post": 1}
        assert type(info.value) is ssekit.ClientError  # not retries exhausted: never retried
        assert isinstance(info.value.__cause__, ssekit.ResponseError)
        replay = RetryPolicy(
            initial_retry=10, jitter=0.0, max_retries=3, retry_statuses={503}, replay_post=True
        )
        params = {"key": "replayed"}
        with connect_sse(
            client, "POST", "/flaky", params=params, json={"q": 1}, reconnect=replay
        ) as source:
            data = []
            for event in source.iter_sse():
                data.append(event.data)
                if len(data) == 2:
                    break
    assert data == ["one", "two"]
    assert log.attempts == {"post": 1, "replayed": 2}
    assert [body for method, path, _, body in log.requests if path == "/flaky"][-1] == b'{"q":1}'


async def test_first_request_gives_up_with_the_policys_error(
    server: tuple[Running, Log],
) -> None:
    state, log = server
    params = {"fails": "100", "key": "down"}
    async with httpx.AsyncClient(base_url=state.url) as client:
        with pytest.raises(ssekit.RetriesExhausted) as info:
            async with aconnect_sse(client, "GET", "/flaky", params=params, reconnect=FAST_503):
                pass
    assert log.attempts == {"down": 4}  # the first request and max_retries=3 retries
    assert info.value.reconnections == 3
    assert isinstance(info.value.__cause__, ssekit.ResponseError)
    assert info.value.__cause__.status == 503


def test_a_retry_0_storm_is_held_to_the_default_floor(server: tuple[Running, Log]) -> None:
    # It used to reconnect about 460 times a second: each connection brought an event,
    # so the backoff never grew, and 0 ms doubled stays 0.
    state, log = server
    end = time.monotonic() + 1.2
    with httpx.Client(base_url=state.url) as client:
        with connect_sse(client, "GET", "/storm", reconnect=RetryPolicy()) as source:
            for _ in source.iter_sse():
                if time.monotonic() >= end:
                    break
    # The first request, then one each 500 ms at most (the default floor): by 1.2 s, 3.
    assert 2 <= len(log.storm) <= 4
    assert all(b - a >= 0.5 - 0.01 for a, b in itertools.pairwise(log.storm))


async def test_async_storm_without_a_floor_is_held_to_the_reconnections_per_window(
    server: tuple[Running, Log],
) -> None:
    state, log = server
    policy = RetryPolicy(min_delay=0, max_reconnects=4, reconnect_window=0.5, max_retries=1)
    with anyio.move_on_after(1.3):
        async with httpx.AsyncClient(base_url=state.url) as client:
            async with aconnect_sse(client, "GET", "/storm") as source:
                async for _ in source.aiter_sse(reconnect=policy):
                    pass
    reconnections = log.storm[1:]
    assert all(b - a >= 0.5 - 0.01 for a, b in zip(reconnections, reconnections[4:], strict=False))
    assert 5 <= len(log.storm) <= 1 + 4 * 3  # the first, then three windows at most


CREDENTIALS = {
    "Authorization": "Bearer sk-secret",
    "Proxy-Authorization": "Basic cHJveHk6c2VjcmV0",
    "Cookie": "session=s3cret",
    "api-key": "azure-secret",
    "X-API-Key": "anthropic-secret",
    "X-Session": "listed-by-the-caller",
}
PLAIN = {"X-Request-Id": "42"}
# What httpx itself sends, and connect_sse's own headers.
HTTPX_HEADERS = {"host", "accept", "accept-encoding", "connection", "user-agent", "cache-control"}


def test_a_redirect_to_another_origin_carries_no_credentials(
    server: tuple[Running, Log],
) -> None:
    state, log = server
    target_log = Log()
    with running(make_app(target_log)) as target, httpx.Client(base_url=state.url) as client:
        there = f"{target.url}/events?count=1"
        with connect_sse(
            client,
            "GET",
            "/redirect",
            params={"to": there},
            headers={**CREDENTIALS, **PLAIN},
            credential_headers=["x-session"],
            follow_redirects=True,
        ) as source:
            events = list(source.iter_sse())
            assert [r.status_code for r in source.response.history] == [307]
    assert events == [ssekit.Event(data="event 1", id="1")]
    sent = log.requests[0][2]
    assert {name: sent[name.lower()] for name in CREDENTIALS} == CREDENTIALS
    received = target_log.requests[0][2]
    assert set(received) == HTTPX_HEADERS | {"x-request-id"}
    assert (received["host"], received["x-request-id"]) == (target.url[7:], "42")


async def test_async_a_redirect_to_another_host_carries_no_credentials(
    server: tuple[Running, Log],
) -> None:
    state, log = server
    there = state.url.replace("127.0.0.1", "localhost") + "/events?count=1"
    async with httpx.AsyncClient(base_url=state.url, follow_redirects=True) as client:
        async with aconnect_sse(
            client,
            "GET",
            "/redirect",
            params={"to": there, "status": "302"},
            headers={**CREDENTIALS, **PLAIN},
            credential_headers=["X-Session"],
        ) as source:
            events = [event async for event in source.aiter_sse()]
    assert events == [ssekit.Event(data="event 1", id="1")]
    assert [path for _, path, _, _ in log.requests] == ["/redirect", "/events"]
    received = log.requests[1][2]
    assert set(received) == HTTPX_HEADERS | {"x-request-id"}
    assert received["host"] == there.split("/")[2]


@pytest.mark.parametrize("status", ["302", "307"])
async def test_async_a_same_origin_redirect_keeps_every_header(
    server: tuple[Running, Log], status: str
) -> None:
    state, log = server
    async with httpx.AsyncClient(base_url=state.url, follow_redirects=True) as client:
        async with aconnect_sse(
            client,
            "GET",
            "/redirect",
            params={"to": "/events?count=1", "status": status},
            headers={**CREDENTIALS, **PLAIN},
            credential_headers=["x-session"],
        ) as source:
            events = [event async for event in source.aiter_sse()]
    assert events == [ssekit.Event(data="event 1", id="1")]
    received = log.requests[1][2]
    assert set(received) == HTTPX_HEADERS | {"x-request-id"} | {k.lower() for k in CREDENTIALS}
    assert {name: received[name.lower()] for name in CREDENTIALS} == CREDENTIALS


def test_redirects_are_left_alone_unless_asked_and_bounded_when_followed(
    server: tuple[Running, Log],
) -> None:
    state, log = server
    with httpx.Client(base_url=state.url) as client:
        # The client's default (httpx's: not followed): the redirect is the answer.
        with connect_sse(client, "GET", "/redirect", params={"to": "/events"}) as source:
            with pytest.raises(ssekit.ResponseError) as info:
                list(source.iter_sse())
        assert info.value.status == 307
        assert len(log.requests) == 1
    with httpx.Client(base_url=state.url, follow_redirects=True, max_redirects=3) as client:
        with pytest.raises(httpx.TooManyRedirects):
            with connect_sse(client, "GET", "/redirect"):
                pass
    assert len(log.requests) == 1 + 1 + 3  # the first block's, then one and three redirects
