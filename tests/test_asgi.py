"""ssekit.asgi and ssekit.starlette under real uvicorn on 127.0.0.1, with real clients.

Apps are FastAPI and bare Starlette (and the framework-free ASGI app); clients are httpx,
ssekit.httpx, the ssekit decoder and the ssekit client. Each producer records what happened
to it (started, finished, its ``finally``), and each ASGI call records when it returned.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
from _servers import deadline, start_proxy
from _uvicorn import running, wait_for
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

import ssekit
from ssekit.asgi import EventStreamResponse, encode_item, end_streams, stream_events
from ssekit.client import RetryPolicy, stream_sync
from ssekit.httpx import aconnect_sse, connect_sse
from ssekit.starlette import EventSourceResponse

pytestmark = [pytest.mark.timeout(60), pytest.mark.anyio]


@dataclass
class Probe:
    """What the producers and the ASGI calls went through, as seen from the server."""

    finally_at: list[float] = field(default_factory=list)
    finished: int = 0
    returned_at: list[float] = field(default_factory=list)
    started: int = 0


async def ticks(probe: Probe, count: int = 2_000, every: float = 0.005) -> AsyncIterator[Any]:
    probe.started += 1
    try:
        for n in range(count):
            yield ssekit.Event(data=f"tick {n}", id=str(n))
            await anyio.sleep(every)
        probe.finished += 1
    finally:
        probe.finally_at.append(time.monotonic())


def pieces(probe: Probe) -> Iterator[Any]:
    """A sync producer mixing every kind of item; it blocks, which must not stall the loop."""
    probe.started += 1
    try:
        yield ssekit.Event(data="one\ntwo", event="note", id="1")
        time.sleep(0.05)
        yield "plain text"
        yield b"data: already encoded\n\n"
        yield {"data": "from a dict", "id": "4", "retry": 2500}
        yield {"comment": "a comment"}
        probe.finished += 1
    finally:
        probe.finally_at.append(time.monotonic())


EXPECTED = [
    ssekit.Event(data="one\ntwo", event="note", id="1"),
    ssekit.Event(data="plain text", id="1"),
    ssekit.Event(data="already encoded", id="1"),
    ssekit.Event(data="from a dict", id="4", retry=2500),
]


def recorded(app: Any, probe: Probe) -> Any:
    """``app`` with the time each ASGI call returned recorded."""

    async def wrapper(scope: Any, receive: Any, send: Any) -> None:
        try:
            await app(scope, receive, send)
        finally:
            if scope["type"] == "http":
                probe.returned_at.append(time.monotonic())

    return wrapper


def fastapi_app(probe: Probe, *, ping: float | None = None) -> Any:
    app = FastAPI()

    @app.get("/ticks")
    async def ticks_route(count: int = 2_000, every: float = 0.005) -> EventSourceResponse:
        return EventSourceResponse(ticks(probe, count, every), ping=ping)

    @app.get("/pieces")
    def pieces_route() -> EventSourceResponse:
        return EventSourceResponse(pieces(probe), headers={"X-Stream": "pieces"})

    return recorded(app, probe)


def starlette_app(probe: Probe) -> Any:
    async def stream(request: Request) -> EventSourceResponse:
        count = int(request.query_params.get("count", "2000"))
        return EventSourceResponse(ticks(probe, count), ping=5)

    return recorded(Starlette(routes=[Route("/ticks", stream, methods=["GET", "HEAD"])]), probe)


def test_fastapi_stream_reaches_httpx_with_the_event_stream_headers() -> None:
    probe = Probe()
    with running(fastapi_app(probe)) as server:
        with httpx.Client() as client:
            with connect_sse(client, "GET", f"{server.url}/pieces") as source:
                events = list(source.iter_sse())
                headers = source.response.headers
        wait_for(lambda: probe.returned_at, 5, "the ASGI call never returned")
    assert events == EXPECTED
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert headers["x-stream"] == "pieces"
    assert probe.finished == 1
    assert server.errors == []


def test_bare_starlette_stream_read_by_the_ssekit_decoder_and_client() -> None:
    probe = Probe()
    with running(starlette_app(probe)) as server:
        with httpx.Client() as client:
            with client.stream("GET", f"{server.url}/ticks?count=5") as response:
                decoded = list(ssekit.iter_events(response.iter_bytes()))
        # The reconnecting client: the server ends the stream, the client resumes from id 4.
        events = []
        for event in stream_sync(
            f"{server.url}/ticks?count=3", policy=RetryPolicy(initial_retry=10, max_retries=1)
        ):
            events.append(event)
            if len(events) == 4:
                break
    assert [e.data for e in decoded] == [f"tick {n}" for n in range(5)]
    assert [e.id for e in events] == ["0", "1", "2", "0"]
    assert server.errors == []


def test_head_answers_the_head_and_never_starts_the_producer() -> None:
    probe = Probe()
    with running(starlette_app(probe)) as server:
        response = httpx.head(f"{server.url}/ticks", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.content == b""
    assert probe.started == 0


@pytest.mark.parametrize("make_app", [fastapi_app, starlette_app], ids=["fastapi", "starlette"])
async def test_client_leaving_mid_stream_stops_the_producer_at_once(make_app: Any) -> None:
    probe = Probe()
    with running(make_app(probe)) as server:
        async with httpx.AsyncClient() as client:
            async with aconnect_sse(client, "GET", f"{server.url}/ticks") as source:
                async for event in source.aiter_sse():
                    if event.id == "3":
                        break
            left = time.monotonic()
        with anyio.fail_after(3):
            while not probe.returned_at:
                await anyio.sleep(0.005)
    assert probe.finished == 0
    assert len(probe.finally_at) == 1
    assert probe.finally_at[0] - left < 0.5  # the generator's finally ran at once
    assert probe.returned_at[0] - left < 0.5  # and no ping loop or task kept the call alive
    assert server.errors == []


def test_pings_come_only_between_events_when_idle() -> None:
    async def slow_pieces() -> AsyncIterator[Any]:
        yield ssekit.Event(data="first")
        await anyio.sleep(0.2)  # idle between events: pings due here
        yield b"data: hal"
        await anyio.sleep(0.2)  # inside an event written in pieces: no ping may land here
        yield b"f\n\n"
        yield {"data": "last"}

    async def route(request: Request) -> EventSourceResponse:
        return EventSourceResponse(slow_pieces(), ping=0.03)

    app = Starlette(routes=[Route("/", route)])
    with running(app) as server:
        with httpx.Client() as client:
            with client.stream("GET", server.url) as response:
                reads = list(response.iter_bytes())
    wire = b"".join(reads)
    first, inside = wire.split(b"data: hal")
    assert first.startswith(b"data: first\n\n")
    assert first.count(b": ping\n") >= 3  # 0.2 s idle at 0.03 s
    assert inside.startswith(b"f\n\n")  # nothing between the two pieces of the event
    assert ssekit.Decoder().feed(wire) == [
        ssekit.Event(data="first"),
        ssekit.Event(data="half"),
        ssekit.Event(data="last"),
    ]


def test_a_producer_error_cuts_the_stream_instead_of_ending_it() -> None:
    async def failing() -> AsyncIterator[Any]:
        yield "before"
        raise RuntimeError("the model backend died")

    async def route(request: Request) -> EventSourceResponse:
        return EventSourceResponse(failing())

    with running(Starlette(routes=[Route("/", route)])) as server:
        seen = []
        with httpx.Client() as client:
            with connect_sse(client, "GET", server.url) as source:
                with pytest.raises(httpx.RemoteProtocolError):
                    seen.extend(event.data for event in source.iter_sse())
    assert seen == ["before"]


def test_send_timeout_drops_a_client_that_stopped_reading() -> None:
    probe = Probe()
    big = "x" * 256 * 1024

    async def flood() -> AsyncIterator[Any]:
        probe.started += 1
        try:
            for _ in range(400):  # 100 MB: far past any socket buffer
                yield big
        finally:
            probe.finally_at.append(time.monotonic())

    app = recorded(EventStreamResponse(flood(), send_timeout=0.3), probe)
    with running(app, lifespan="off") as server:  # a one-request app: no lifespan scope
        port = int(server.url.rsplit(":", 1)[1])
        stuck = socket.create_connection(("127.0.0.1", port), timeout=5)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            stuck.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_for(lambda: probe.finally_at, 10, "the stuck client was never dropped")
        finally:
            stuck.close()
    assert probe.returned_at
    # The app failed with the timeout (uvicorn logged it, with the exception).
    assert any(r.exc_info and isinstance(r.exc_info[1], TimeoutError) for r in server.errors)


def test_server_shutdown_ends_open_streams_cleanly() -> None:
    probe = Probe()
    outcome: list[object] = []
    with running(fastapi_app(probe), timeout_graceful_shutdown=0.5) as server:

        def read() -> None:
            try:
                with httpx.Client(timeout=10) as client:
                    with connect_sse(client, "GET", f"{server.url}/ticks?every=0.02") as source:
                        outcome.append(len(list(source.iter_sse())))
            except Exception as exc:  # the test checks there was none
                outcome.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        wait_for(lambda: probe.started, 5, "the stream never started")
        time.sleep(0.1)
        took = server.stop()  # what SIGTERM does
        reader.join(5)
    assert len(outcome) == 1
    assert isinstance(outcome[0], int)
    assert outcome[0] > 0
    assert len(probe.finally_at) == 1
    assert probe.finished == 0
    assert took < 3
    assert not [r for r in server.errors if r.exc_info]  # no exception in the app


def test_end_streams_ends_every_open_stream_cleanly_and_uvicorn_stops_at_once() -> None:
    probe = Probe()
    outcomes: list[object] = []
    with running(fastapi_app(probe)) as server:  # no timeout_graceful_shutdown

        def read() -> None:
            try:
                with httpx.Client(timeout=10) as client:
                    with connect_sse(client, "GET", f"{server.url}/ticks?every=0.01") as source:
                        outcomes.append([event.id for event in source.iter_sse()])
            except Exception as exc:  # the test checks there was none
                outcomes.append(exc)

        readers = [threading.Thread(target=read) for _ in range(2)]
        for reader in readers:
            reader.start()
        wait_for(lambda: probe.started == 2, 5, "the streams never started")
        time.sleep(0.1)
        asked = end_streams()  # from another thread than the server's
        for reader in readers:
            reader.join(5)
        wait_for(lambda: len(probe.returned_at) == 2, 3, "an ASGI call never returned")
        took = server.stop()
    assert asked == 2
    assert len(outcomes) == 2
    for ids in outcomes:
        assert isinstance(ids, list)  # no httpx error: each body ended cleanly
        assert ids == [str(n) for n in range(len(ids))]
        assert len(ids) >= 3
    assert len(probe.finally_at) == 2
    assert probe.finished == 0
    assert took < 2  # nothing left open for uvicorn to wait for
    assert end_streams() == 0
    assert server.errors == []


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_end_streams_reaches_streams_on_either_anyio_backend(backend: str) -> None:
    sent: list[dict[str, Any]] = []
    closed: list[str] = []

    async def receive() -> dict[str, Any]:
        await anyio.sleep(30)  # the client never leaves
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def endless() -> AsyncIterator[str]:
        try:
            for n in range(10_000):
                yield f"event {n}"
                await anyio.sleep(0.005)
        finally:
            closed.append("finally")

    async def main() -> None:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(stream_events, receive, send, endless())
                while len(sent) < 4:
                    await anyio.sleep(0.005)
                # From a thread, as a signal handler or another server thread would.
                await anyio.to_thread.run_sync(end_streams)

    anyio.run(main, backend=backend)
    assert sent[0]["type"] == "http.response.start"
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert all(m["more_body"] for m in sent[1:-1])
    assert closed == ["finally"]


@pytest.mark.usefixtures("http_engine")  # the proxy on both HTTP/1.1 engines
def test_through_ssekit_proxy_events_flow_and_the_disconnect_reaches_the_producer() -> None:
    probe = Probe()
    with running(fastapi_app(probe)) as server:

        async def main() -> float:
            async with deadline(20) as tg:
                proxy = await start_proxy(tg, server.url)
                async with httpx.AsyncClient() as client:
                    url = f"{proxy}/ticks?every=0.01"
                    async with aconnect_sse(client, "GET", url) as source:
                        ids = []
                        async for event in source.aiter_sse():
                            ids.append(event.id)
                            if len(ids) == 5:
                                break
                    assert ids == ["0", "1", "2", "3", "4"]
                    assert source.response.headers["x-accel-buffering"] == "no"
                    return time.monotonic()
            raise AssertionError("unreachable")

        left = anyio.run(main)
        wait_for(lambda: probe.finally_at, 3, "the producer outlived the client")
    assert probe.finally_at[0] - left < 1.0
    assert server.errors == []


def test_items_encode_as_the_decoder_reads_them_back() -> None:
    wire = b"".join(
        encode_item(item)
        for item in [
            ssekit.Event(data="a", id="1"),
            "b\r\nc",
            b"data: d\n\n",
            {"data": "e", "event": "x"},
            {"comment": "hb"},
        ]
    )
    assert ssekit.Decoder().feed(wire) == [
        ssekit.Event(data="a", id="1"),
        ssekit.Event(data="b\nc", id="1"),
        ssekit.Event(data="d", id="1"),
        ssekit.Event(data="e", event="x", id="1"),
    ]
    with pytest.raises(TypeError):  # an unknown field
        encode_item({"data": "x", "sep": "\n"})
    with pytest.raises(ssekit.EncodeError):
        encode_item({"data": "x", "id": "a\0b"})
    with pytest.raises(TypeError):  # neither an Event nor a dict
        encode_item(42)  # type: ignore[arg-type]
