"""Helpers for the resumable-stream tests: a Redis server of our own, resume reads, drops."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
import httpx

import ssekit

REDIS_SERVER = "/usr/bin/redis-server"
CHAT = {"model": "ssekit-mock", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    """Debian's redis-server on a free loopback port, no persistence; stop/start keep the port."""

    port: int
    dir: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert os.access(REDIS_SERVER, os.X_OK), "Debian's redis-server is needed (.ci/run)"
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                "no", "--dir", self.dir, "--protected-mode", "no", "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start within 10 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    directory = tempfile.mkdtemp(prefix="ssekit-redis-")
    server = RedisServer(port=free_port(), dir=directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def start_chat(
    client: httpx.AsyncClient, base: str, events: int, headers: dict[str, str] | None = None
) -> tuple[str, list[ssekit.Event]]:
    """POST a streamed chat, read ``events`` events, then drop the connection.

    Returns the stream id (the ssekit-stream-id header) and the events seen.
    """
    seen: list[ssekit.Event] = []
    async with client.stream(
        "POST", base + "/v1/chat/completions", json=CHAT, headers=headers or {}
    ) as response:
        assert response.status_code == 200, await response.aread()
        stream_id = response.headers["ssekit-stream-id"]
        async for event in ssekit.aiter_events(response.aiter_bytes()):
            seen.append(event)
            if len(seen) == events:
                break
    return stream_id, seen


@dataclass
class Resumed:
    status: int
    events: list[ssekit.Event]
    complete: bool  # the body ended cleanly (a last chunk); False: cut
    body: bytes
    headers: httpx.Headers


async def resume(
    base: str,
    stream_id: str,
    *,
    last_event_id: str | None = None,
    query: str = "",
    headers: dict[str, str] | None = None,
    stop_after: int | None = None,
) -> Resumed:
    """GET the resume URL and read it to its end (or ``stop_after`` events, then drop)."""
    sent = dict(headers or {})
    if last_event_id is not None:
        sent["Last-Event-ID"] = last_event_id
    body = b""
    events: list[ssekit.Event] = []
    complete = True
    async with (
        httpx.AsyncClient(timeout=30) as client,
        client.stream("GET", f"{base}/_ssekit/streams/{stream_id}{query}", headers=sent) as r,
    ):
        if r.status_code != 200:
            return Resumed(r.status_code, [], True, await r.aread(), r.headers)
        decoder = ssekit.Decoder()
        try:
            async for data in r.aiter_raw():
                body += data
                events += decoder.feed(data)
                if stop_after is not None and len(events) >= stop_after:
                    return Resumed(200, events[:stop_after], False, body, r.headers)
        except httpx.RemoteProtocolError:
            complete = False
    return Resumed(200, events, complete, body, r.headers)


def error_of(resumed: Resumed) -> dict[str, object]:
    """The ``error`` object of a refusal's JSON body (OpenAI's shape: type, code, ...)."""
    error = json.loads(resumed.body)["error"]
    assert isinstance(error, dict)
    return error


async def wait_for(predicate: object, within: float = 10.0, step: float = 0.01) -> None:
    assert callable(predicate)
    with anyio.fail_after(within):
        while not predicate():
            await anyio.sleep(step)
