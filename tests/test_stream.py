"""FastStream, the proxy's byte stream on the asyncio transport, over real loopback sockets."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from ssekit._http import _stream
from ssekit._http._stream import HIGH_WATER, FastStream

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def pair() -> AsyncIterator[tuple[FastStream, socket.socket]]:
    """A FastStream accepted from a plain blocking-free peer socket."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        peer = socket.create_connection(server.getsockname())
        peer.setblocking(False)
        try:
            with anyio.fail_after(5):
                stream = await _stream.accept(server)
            try:
                yield stream, peer
            finally:
                await stream.aclose()
        finally:
            peer.close()


async def test_queued_bytes_come_back_in_order_then_end_of_stream() -> None:
    async with pair() as (stream, peer):
        peer.sendall(b"hello ")
        peer.sendall(b"world")
        peer.shutdown(socket.SHUT_WR)
        received = b""
        with anyio.fail_after(5), pytest.raises(anyio.EndOfStream):
            while True:
                received += await stream.receive(4)
        assert received == b"hello world"


async def test_a_read_with_nothing_to_read_times_out_and_the_stream_stays_usable() -> None:
    async with pair() as (stream, peer):
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await stream.receive_within(1024, 0.1)
        assert time.monotonic() - started >= 0.09
        peer.sendall(b"late")
        with anyio.fail_after(5):
            assert await stream.receive_within(1024, 5) == b"late"


async def test_reading_pauses_past_the_high_water_mark_so_the_peer_is_pushed_back() -> None:
    async with pair() as (stream, peer):
        sent = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                sent += peer.send(b"x" * 65536)
            except BlockingIOError:
                await anyio.sleep(0.01)  # let the stream read what it will
        # The stream took at most its bound; the rest sits in kernel buffers or was refused.
        assert stream._queued <= HIGH_WATER + 65536 * 4
        assert sent < 64 * 1024 * 1024
        drained = 0
        with anyio.fail_after(10):
            while drained < sent:
                drained += len(await stream.receive(1 << 20))
        assert drained == sent  # nothing lost once read on


async def test_send_reaches_the_peer_and_a_closed_stream_refuses_more() -> None:
    async with pair() as (stream, peer):
        await stream.send(b"ping")
        peer.setblocking(True)
        peer.settimeout(5)
        assert peer.recv(16) == b"ping"
        await stream.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await stream.send(b"more")
        with pytest.raises(anyio.ClosedResourceError):
            await stream.receive()


async def test_a_peer_reset_makes_send_fail_as_broken() -> None:
    async with pair() as (stream, peer):
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.close()  # RST
        with anyio.fail_after(5), pytest.raises(anyio.BrokenResourceError):
            for _ in range(100):
                await stream.send(b"x" * 1024)
                await anyio.sleep(0.01)


async def test_a_slow_reader_makes_send_wait_instead_of_buffering_without_bound() -> None:
    async with pair() as (stream, peer):
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        written = 0
        with anyio.move_on_after(1):
            while True:
                await stream.send(b"y" * 65536)
                written += 65536
        # Kernel buffers on both sides plus the transport's limit: a few MB at most.
        assert written < 16 * 1024 * 1024


async def test_a_shorter_limit_after_a_longer_one_still_expires_on_time() -> None:
    # The idle timer is one per stream and only moved by each wait: a later wait with an
    # earlier deadline (a body read after a long first-byte wait) must still expire on time.
    async with pair() as (stream, peer):
        peer.sendall(b"a")
        with anyio.fail_after(5):
            assert await stream.receive_within(16, 60) == b"a"  # nothing waited
        with anyio.move_on_after(0.05):
            await stream.receive_within(16, 60)  # a long limit, then leave the wait
        started = time.monotonic()
        with anyio.fail_after(5), pytest.raises(TimeoutError):
            await stream.receive_within(16, 0.1)
        assert time.monotonic() - started < 1
