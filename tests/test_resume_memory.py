"""What resumable streams cost in memory: stalled readers, the memory store's limit.

Memory is measured with tracemalloc (the Python heap, deterministic: no RSS timing); the
kernel's socket buffers are not in it, so a reader that never reads shows exactly what
the proxy holds for it.
"""

from __future__ import annotations

import gc
import re
import socket
import sys
import tracemalloc
from collections.abc import Iterator

import anyio
import httpx
import pytest
from _resume_helpers import RedisServer, redis_server, resume
from _servers import deadline, start_proxy, start_upstream
from test_resume_e2e import slow_upstream

from ssekit.proxy._resume import MemoryStore
from ssekit.proxy._resume._records import State

pytestmark = pytest.mark.anyio

#: What one stalled reader may cost the proxy, whatever the stream's backlog: a piece of
#: the replay (16 KiB) twice (as read, as framed), the transport's write buffer (64 KiB and
#: the write that passed it), its connection and tasks.
PER_READER: int = 160 * 1024


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory"
    server: RedisServer = request.getfixturevalue("redis")
    return server.url


def stalled_reader(base: str, stream_id: str) -> socket.socket:
    """A client that asks for the stream and never reads (a small receive window)."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(b"GET /_ssekit/streams/%s HTTP/1.1\r\nHost: x\r\n\r\n" % stream_id.encode())
    return sock


async def active(client: httpx.AsyncClient, base: str) -> int:
    """Exchanges in flight, besides the metrics request that asks."""
    text = (await client.get(base + "/_ssekit/metrics")).text
    match = re.search(r"^ssekit_active_requests (\d+)$", text, re.MULTILINE)
    assert match is not None
    return int(match.group(1)) - 1


async def settled_heap(within: float = 10.0) -> int:
    """tracemalloc's current size once it stops moving (bounded in time)."""
    last = -1
    with anyio.move_on_after(within):
        while True:
            await anyio.sleep(0.2)
            gc.collect()
            now = tracemalloc.get_traced_memory()[0]
            if abs(now - last) < 16 * 1024:
                return now
            last = now
    return tracemalloc.get_traced_memory()[0]


async def test_stalled_resume_readers_cost_a_bounded_piece_each_and_give_it_back(
    store: str,
) -> None:
    """Issue 20.1: 4 MiB stored; readers that never read hold tens of KiB each, not the
    backlog, for both stores, and the memory comes back when they go."""
    pieces = [b"data: %04d %s\n\n" % (n, b"x" * 1000) for n in range(4096)]  # ~4 MiB
    readers = 8
    async with deadline(120) as tg:
        upstream, _ = await start_upstream(tg, slow_upstream(pieces, 0))
        base = await start_proxy(tg, upstream, resume_store=store, pool_size=0)
        async with httpx.AsyncClient(timeout=30) as client:
            async with client.stream("GET", base + "/stream") as response:
                stream_id = response.headers["ssekit-stream-id"]
                await response.aread()
            whole = await resume(base, stream_id)  # stored, whole, ended
            assert whole.complete
            assert len(whole.events) == len(pieces)
            del whole
            tracemalloc.start()
            try:
                baseline = await settled_heap()
                tracemalloc.reset_peak()
                socks = [stalled_reader(base, stream_id) for _ in range(readers)]
                try:
                    with anyio.fail_after(20):
                        while await active(client, base) < readers:
                            await anyio.sleep(0.05)
                    held = await settled_heap() - baseline
                    peak = tracemalloc.get_traced_memory()[1] - baseline
                finally:
                    for sock in socks:
                        sock.close()
                with anyio.fail_after(20):
                    while await active(client, base) > 0:
                        await anyio.sleep(0.05)
                left = await settled_heap() - baseline
            finally:
                tracemalloc.stop()
    assert held < readers * PER_READER, held
    assert peak < readers * PER_READER + 1024 * 1024, peak
    assert left < 256 * 1024, left


def test_the_memory_store_limit_counts_the_bytes_really_held() -> None:
    """Issue 20.1: many tiny events cost far more than their length (an object each); the
    limit counts what the store really holds, so it stays within it."""
    limit = 2 * 1024 * 1024
    store = MemoryStore(ttl=60, max_bytes=limit, limit=limit)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = []
        for n in range(40):
            writer = store.open(f"-/{n}", f"run-{n}")
            for _ in range(5000):
                writer.append(b"data: %d\n" % n)  # 9 or 10 bytes of body each
            writer.end(State.DONE)
            kept.append(writer)
        del kept
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert store.total <= limit
    assert held <= limit * 1.15, (held, sys.getsizeof(b""))
