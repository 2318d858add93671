"""A burst of new requests begins a few per event-loop turn, in the order they came.

Unit tests count loop turns with a callback that reschedules itself (it runs once
per turn); the end-to-end test runs the proxy as its own process and checks the
order a user sees: with a burst of requests at once, the first ones are answered
while the later ones are still being set up, not all of them at the end.
"""

from __future__ import annotations

import asyncio
import collections
import selectors
import signal
import socket
import time

import anyio
import pytest
from _procs import finish, listening, spawn
from _servers import LAST_CHUNK, SSE_HEAD, Seen, chunk, deadline, start_upstream

from ssekit.proxy._listener import Turns


def count_turns(loop: asyncio.AbstractEventLoop) -> list[int]:
    """A counter that goes up by one each loop turn (until the loop closes)."""
    turn = [0]

    def tick() -> None:
        turn[0] += 1
        loop.call_soon(tick)

    loop.call_soon(tick)
    return turn


def test_a_burst_begins_a_few_per_turn_first_come_first_served() -> None:
    async def main() -> list[tuple[int, int]]:
        turns = Turns(4)
        turn = count_turns(asyncio.get_running_loop())
        began: list[tuple[int, int]] = []

        async def one(index: int) -> None:
            await turns.take()
            began.append((index, turn[0]))

        await asyncio.gather(*(one(i) for i in range(18)))
        return began

    began = asyncio.run(main())
    assert [index for index, _ in began] == list(range(18))
    per_turn = collections.Counter(at for _, at in began)
    assert max(per_turn.values()) <= 4
    assert len(per_turn) >= 5  # 18 requests, 4 per turn


def test_a_request_on_an_idle_proxy_begins_without_waiting_a_turn() -> None:
    async def main() -> None:
        turns = Turns(4)
        for _ in range(3):  # one at a time, as an idle proxy sees them
            step = turns.take().__await__()
            with pytest.raises(StopIteration):
                step.send(None)  # finished on the first step: never suspended
            await asyncio.sleep(0)

    asyncio.run(main())


def test_a_waiter_cancelled_in_the_queue_does_not_hold_the_others() -> None:
    async def main() -> tuple[list[int], bool]:
        turns = Turns(2)
        turn = count_turns(asyncio.get_running_loop())
        began: list[int] = []
        at: list[int] = []

        async def one(index: int) -> None:
            await turns.take()
            began.append(index)
            at.append(turn[0])

        tasks = [asyncio.create_task(one(i)) for i in range(8)]
        await asyncio.sleep(0)  # all have taken their place: 0 and 1 began, 2-7 wait
        tasks[5].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert max(collections.Counter(at).values()) <= 2
        return began, isinstance(results[5], asyncio.CancelledError)

    began, cancelled = asyncio.run(main())
    assert began == [0, 1, 2, 3, 4, 6, 7]
    assert cancelled


def test_on_trio_every_request_begins_at_once() -> None:
    async def main() -> list[int]:
        turns = Turns(2)
        began: list[int] = []

        async def one(index: int) -> None:
            step = turns.take().__await__()
            with pytest.raises(StopIteration):
                step.send(None)
            began.append(index)

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(one, i)
        return began

    assert sorted(anyio.run(main, backend="trio")) == list(range(10))


BURST = 60


def burst(base: str) -> list[float]:
    """Open BURST connections, then send every request at once (one tight loop of
    plain socket writes); returns when each response head arrived."""
    host, port = base.removeprefix("http://").split(":")
    clients = [socket.create_connection((host, int(port)), timeout=30) for _ in range(BURST)]
    try:
        time.sleep(0.2)  # every connection accepted and waiting for its request
        for client in clients:
            client.sendall(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
        answered = []
        with selectors.DefaultSelector() as selector:
            heads = {}
            for client in clients:
                selector.register(client, selectors.EVENT_READ)
                heads[client] = b""
            while heads:
                for key, _ in selector.select(timeout=30):
                    client = key.fileobj
                    assert isinstance(client, socket.socket)
                    heads[client] += client.recv(65536)
                    if b"\r\n\r\n" in heads[client]:
                        answered.append(time.monotonic())
                        assert heads.pop(client).startswith(b"HTTP/1.1 200 ")
                        selector.unregister(client)
        return answered
    finally:
        for client in clients:
            client.close()


@pytest.mark.anyio
async def test_a_burst_of_requests_is_answered_in_order_not_all_at_the_end(
    http_engine: str,
) -> None:
    """Most of a burst is answered before its last request even reaches the upstream:
    the proxy does not set up every request first (which held every answer, and every
    open stream's events, behind the whole burst)."""
    reached: list[float] = []

    async def answer(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        reached.append(time.monotonic())
        await stream.send(SSE_HEAD + chunk(b"data: hi\n\n") + LAST_CHUNK)

    async with deadline(60) as tg:
        upstream, _ = await start_upstream(tg, answer)
        proxy = spawn(
            "proxy", "--upstream", upstream, "--listen", "127.0.0.1:0", "--http", http_engine
        )
        try:
            base = await anyio.to_thread.run_sync(listening, proxy, "proxy")
            answered = await anyio.to_thread.run_sync(burst, base)
        finally:
            proxy.send_signal(signal.SIGTERM)
            await anyio.to_thread.run_sync(finish, proxy)
    assert len(reached) == len(answered) == BURST
    # Set up all at once, 0-3 of 60 were answered before the last request went up; a
    # few per turn, 52-55 of 60 (measured).
    early = sum(at < max(reached) for at in answered)
    assert early >= BURST // 2, f"{early} of {BURST} answered before the last request went up"
