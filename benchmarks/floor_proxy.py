"""The floor: the least a Python proxy on uvloop can do per request, for measuring against.

Not a proxy anyone should run: no validation, no limits, no timeouts, no keep-alive,
no error answers. It relays each client connection's first request head to the
upstream (Host replaced) and every byte back, from transport callbacks, with one
coroutine per request for the connect. ``benchmarks/README.md`` compares its CPU per
request and time to first byte with ssekit's and nginx's, to show how much of
ssekit's per-request cost is Python itself and how much is ssekit's shape.

    python -m benchmarks.floor_proxy UPSTREAM_PORT LISTEN_PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import uvloop


class _Upstream(asyncio.Protocol):
    def __init__(self, client: _Client) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        if self.client.transport is not None and not self.client.transport.is_closing():
            self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client.transport is not None:
            self.client.transport.close()


class _Client(asyncio.Protocol):
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream_address = upstream
        self.transport: asyncio.Transport | None = None
        self.upstream: asyncio.BaseTransport | None = None
        self.buffer = b""
        self.connecting: asyncio.Future[None] | None = None  # held: a task must be referenced

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.connecting is None and b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            kept = [line for line in lines[1:] if not line.lower().startswith(b"host:")]
            request = b"\r\n".join([lines[0], *kept, b"host: upstream", b"via: 1.1 floor"])
            self.connecting = asyncio.ensure_future(self._forward(request + b"\r\n\r\n" + rest))

    async def _forward(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(lambda: _Upstream(self), *self.upstream_address)
        self.upstream = transport
        transport.write(request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.abort()  # type: ignore[attr-defined]


async def _main(upstream_port: int, listen_port: int) -> None:
    loop = asyncio.get_running_loop()
    upstream = ("127.0.0.1", upstream_port)
    server = await loop.create_server(
        lambda: _Client(upstream), "127.0.0.1", listen_port, backlog=1024
    )
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(_main(int(sys.argv[1]), int(sys.argv[2])))
