"""A sync producer that blocks cannot hold the server (issue 20, section 6).

``EventSourceResponse`` over a sync iterator whose ``next()`` blocks (a thread waiting on
a queue that never fills): the app's own ``def`` endpoints keep their threads, a client
leaving ends the response at once, and the iterator's ``close()`` runs when its step
returns. Real uvicorn on 127.0.0.1 (a free port), raw sockets as clients.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import time
from collections.abc import Iterator
from typing import Any

import anyio.to_thread
import httpx
import pytest
from _uvicorn import running, wait_for
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import ssekit
from ssekit import asgi
from ssekit.starlette import EventSourceResponse

pytestmark = pytest.mark.timeout(60)

#: More blocked producers than anyio's default thread limiter has tokens (40).
BLOCKED = 45


class Producers:
    """Sync producers that send one event, then block on ``gate`` until the test opens it."""

    def __init__(self) -> None:
        self.gate: queue.Queue[None] = queue.Queue()
        self.log: list[str] = []

    def events(self, name: str) -> Iterator[Any]:
        self.log.append(f"start {name}")
        try:
            yield ssekit.Event(data=f"first {name}")
            self.log.append(f"blocked {name}")
            self.gate.get()  # blocks in its thread, as a producer waiting on a queue does
            yield ssekit.Event(data=f"second {name}")
        finally:
            self.log.append(f"closed {name}")

    def open_gate(self) -> None:
        for _ in range(2 * BLOCKED):
            self.gate.put(None)

    def app(self) -> Starlette:
        async def stream(request: Request) -> EventSourceResponse:
            name = request.query_params["name"]
            ended = BackgroundTask(self.log.append, f"ended {name}")  # once the response is over
            return EventSourceResponse(self.events(name), background=ended)

        def plain(request: Request) -> PlainTextResponse:  # a def endpoint: a worker thread
            return PlainTextResponse("ok")

        return Starlette(routes=[Route("/stream", stream), Route("/plain", plain)])


def open_stream(url: str, name: str) -> socket.socket:
    """A raw GET of ``/stream?name=...``, read until its first event arrived."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"GET /stream?name={name} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    seen = b""
    deadline = time.monotonic() + 10
    while f"data: first {name}".encode() not in seen:
        assert time.monotonic() < deadline, seen
        data = sock.recv(65536)
        assert data, seen
        seen += data
    return sock


@contextlib.contextmanager
def serving(producers: Producers) -> Iterator[str]:
    try:
        with running(producers.app()) as server:
            yield server.url
            producers.open_gate()  # before uvicorn stops: nothing stays blocked
    finally:
        producers.open_gate()


def test_blocked_sync_producers_leave_the_apps_own_threads_free() -> None:
    producers = Producers()
    with serving(producers) as url:
        sockets = [open_stream(url, str(n)) for n in range(BLOCKED)]
        try:
            with httpx.Client(timeout=5) as client:  # httpx.ReadTimeout when starved
                assert client.get(url + "/plain").text == "ok"
        finally:
            for sock in sockets:
                sock.close()


def test_a_client_leaving_lets_go_of_its_blocked_producer_which_is_closed_once_it_returns() -> None:
    producers = Producers()
    with serving(producers) as url:
        client = open_stream(url, "a")
        # The client leaves once the producer is blocked in its step (had it left between
        # steps, close() would rightly run at once: nothing to wait for).
        wait_for(lambda: "blocked a" in producers.log, 5, "the producer never blocked")
        client.close()
        # The response is over (its background task ran) with the producer still blocked.
        wait_for(lambda: "ended a" in producers.log, 5, "the response waited for the producer")
        assert "closed a" not in producers.log
        producers.open_gate()  # its step returns: then, and only then, close()
        wait_for(lambda: "closed a" in producers.log, 5, "close() never ran")
        assert producers.log == ["start a", "blocked a", "ended a", "closed a"]


def test_sync_producers_have_a_thread_limiter_of_their_own() -> None:
    async def limiters() -> tuple[object, object]:
        return asgi.producer_limiter(), anyio.to_thread.current_default_thread_limiter()

    mine, default = anyio.run(limiters)
    assert mine is not default
