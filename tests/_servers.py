"""Loopback servers for the proxy tests: scripted upstreams, a CONNECT proxy, the proxy itself.

Everything listens on 127.0.0.1 with port 0 and lives inside the caller's task group.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
from anyio.streams.tls import TLSListener

from ssekit.proxy import MockConfig, ProxyConfig, serve, serve_mock

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


@dataclass
class Seen:
    """What a scripted upstream saw, per connection."""

    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    closed_at: list[float] = field(default_factory=list)
    sent: int = 0

    def header(self, name: bytes, index: int = -1) -> bytes | None:
        for line in self.requests[index].split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name:
                return value.strip()
        return None


Script = Callable[[anyio.abc.SocketStream, Seen], Awaitable[None]]


async def read_request(stream: anyio.abc.ByteReceiveStream) -> bytes:
    """Read one request head and its Content-Length body; b"" at EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            data += await stream.receive()
        except anyio.EndOfStream:
            return b""
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            length = int(value)
        if key.strip().lower() == b"transfer-encoding":
            chunked = True
    while len(body) < length or (chunked and not body.endswith(b"0\r\n\r\n")):
        body += await stream.receive()
    return head + b"\r\n\r\n" + body


async def wait_closed(stream: anyio.abc.ByteReceiveStream, seen: Seen) -> None:
    """Block until the peer (the proxy) closes; record when."""
    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        while await stream.receive():
            pass
    seen.closed_at.append(time.monotonic())


async def serve_closing(listener: Any, handle: Callable[[Any], Awaitable[None]]) -> None:
    """Serve until cancelled, then close the listener (even though cancelled)."""
    try:
        await listener.serve(handle)
    finally:
        with anyio.CancelScope(shield=True):
            await listener.aclose()


async def start_upstream(
    tg: anyio.abc.TaskGroup, script: Script, *, tls: Any = None
) -> tuple[str, Seen]:
    """Start a scripted upstream; returns its base URL and what it sees.

    For each connection: read one request, record it, run ``script``.
    """
    seen = Seen()
    listener: Any = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    if tls is not None:
        listener = TLSListener(listener, tls, standard_compatible=False)

    async def handle(stream: Any) -> None:
        seen.connections += 1
        async with stream:
            request = await read_request(stream)
            if not request:
                seen.closed_at.append(time.monotonic())
                return
            seen.requests.append(request)
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                await script(stream, seen)

    tg.start_soon(serve_closing, listener, handle)
    return f"{'https' if tls else 'http'}://{'localhost' if tls else '127.0.0.1'}:{port}", seen


#: The HTTP/1.1 engine the proxy and the mock started here run on (conftest's
#: ``http_engine`` fixture sets it for each test that asks).
HTTP_ENGINE = "ssekit"


def proxy_config(upstream: str, **settings: Any) -> ProxyConfig:
    """A ProxyConfig on a free port and on HTTP_ENGINE (unless ``settings`` say otherwise)."""
    settings = {"listen_port": 0, "http": HTTP_ENGINE, **settings}
    return ProxyConfig(upstream=upstream, **settings)


def mock_config(**settings: Any) -> MockConfig:
    """A MockConfig on a free port and on HTTP_ENGINE (unless ``settings`` say otherwise)."""
    return MockConfig(**{"listen_port": 0, "http": HTTP_ENGINE, **settings})


async def start_proxy(tg: anyio.abc.TaskGroup, upstream: str, **settings: Any) -> str:
    config = proxy_config(upstream, **settings)
    host, port = await tg.start(lambda task_status: serve(config, task_status=task_status))
    return f"http://{host}:{port}"


async def start_mock(tg: anyio.abc.TaskGroup, **settings: Any) -> str:
    host, port = await tg.start(serve_mock, mock_config(**settings))
    return f"http://{host}:{port}"


async def start_connect_proxy(
    tg: anyio.abc.TaskGroup,
    targets: list[bytes],
    opened: bytes = b"HTTP/1.1 200 Connection established\r\n\r\n",
) -> str:
    """A tiny HTTP CONNECT proxy that records each CONNECT target and pipes bytes,
    answering ``opened`` when it opens a tunnel."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def pipe(src: anyio.abc.SocketStream, dst: anyio.abc.SocketStream) -> None:
        with contextlib.suppress(Exception):
            async for data in src:
                await dst.send(data)
        with contextlib.suppress(Exception):
            await dst.send_eof()

    async def handle(client: anyio.abc.SocketStream) -> None:
        async with client:
            head = b""
            while b"\r\n\r\n" not in head:
                head += await client.receive()
            target = head.split()[1]
            targets.append(target)
            host, _, port_text = target.rpartition(b":")
            if host != b"127.0.0.1" and host != b"localhost":
                await client.send(b"HTTP/1.1 403 Forbidden\r\n\r\n")
                return
            upstream = await anyio.connect_tcp("127.0.0.1", int(port_text))
            async with upstream:
                await client.send(opened)
                async with anyio.create_task_group() as pipes:
                    pipes.start_soon(pipe, client, upstream)
                    pipes.start_soon(pipe, upstream, client)

    tg.start_soon(serve_closing, listener, handle)
    return f"http://127.0.0.1:{port}"


async def raw_exchange(url: str, request: bytes, *, read_until_close: bool = True) -> bytes:
    """Send raw request bytes to ``url``'s host and return everything read until EOF."""
    host, port = url.removeprefix("http://").split(":")
    stream = await anyio.connect_tcp(host, int(port))
    async with stream:
        await stream.send(request)
        data = b""
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            while read_until_close or b"\r\n\r\n" not in data:
                data += await stream.receive()
        return data


def parse_chunked(body: bytes) -> tuple[list[bytes], bool]:
    """Split a chunked body into its chunks; True when the last-chunk was present."""
    chunks = []
    while body:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return chunks, True
        if len(rest) < size + 2:
            chunks.append(rest[:size])
            break
        chunks.append(rest[:size])
        body = rest[size + 2 :]
    return chunks, False


@contextlib.asynccontextmanager
async def deadline(seconds: float) -> AsyncIterator[anyio.abc.TaskGroup]:
    """A task group under a deadline, cancelled on exit (servers stop with it)."""
    with anyio.fail_after(seconds):
        async with anyio.create_task_group() as tg:
            yield tg
            tg.cancel_scope.cancel()
