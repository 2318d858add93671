"""The status feed, GET /_ssekit/events: snapshot, updates, resumption, bounds, tokens, workers."""

from __future__ import annotations

import base64
import json
import re
import signal
import socket
import threading
import time
from typing import Any

import anyio
import httpx
import pytest
from _procs import finish, listening, spawn
from _servers import (
    LAST_CHUNK,
    SSE_HEAD,
    Seen,
    chunk,
    deadline,
    start_proxy,
    start_upstream,
)

from ssekit import Decoder, Event
from ssekit.proxy import _status

CHAT = {"stream": True, "messages": [{"role": "user", "content": "hi"}]}


async def feed_messages(
    client: httpx.AsyncClient, url: str, count: int, headers: dict[str, str] | None = None
) -> list[Event]:
    """The first ``count`` snapshot/update events of the feed at ``url``."""
    decoder: Decoder[Event] = Decoder()
    found: list[Event] = []
    async with client.stream("GET", url, headers=headers or {}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for piece in response.aiter_bytes():
            found += [e for e in decoder.feed(piece) if e.event in ("snapshot", "update")]
            if len(found) >= count:
                return found[:count]
    raise AssertionError(f"the feed ended after {len(found)} messages")


async def quick(stream: anyio.abc.SocketStream, seen: Seen) -> None:
    await stream.send(SSE_HEAD + chunk(b"data: 1\n\ndata: 2\n\n") + LAST_CHUNK)


@pytest.mark.anyio
async def test_a_reconnect_with_last_event_id_gets_exactly_what_finished_since() -> None:
    async with deadline(30) as tg:
        upstream, _ = await start_upstream(tg, quick)
        base = await start_proxy(tg, upstream)
        async with httpx.AsyncClient(timeout=10) as client:
            for n in range(3):
                assert (await client.get(f"{base}/v1/a{n}")).status_code == 200
            (first,) = await feed_messages(client, base + "/_ssekit/events", 1)
            assert first.event == "snapshot"
            snap = json.loads(first.data)
            assert [r["path"] for r in snap["finished"]] == ["/v1/a0", "/v1/a1", "/v1/a2"]
            assert {r["outcome"] for r in snap["finished"]} == {"complete"}
            assert [r["events"] for r in snap["finished"]] == [2, 2, 2]
            assert snap["totals"]["outcomes"]["complete"] == 3
            for n in range(3, 5):
                assert (await client.get(f"{base}/v1/a{n}")).status_code == 200
            headers = {"last-event-id": first.id}
            (again,) = await feed_messages(client, base + "/_ssekit/events", 1, headers)
            assert again.event == "update"
            assert [r["path"] for r in json.loads(again.data)["finished"]] == ["/v1/a3", "/v1/a4"]
            # An id this feed never wrote: a snapshot, everything kept.
            headers = {"last-event-id": "garbage"}
            (fresh,) = await feed_messages(client, base + "/_ssekit/events", 1, headers)
            assert fresh.event == "snapshot"
            assert len(json.loads(fresh.data)["finished"]) == 5


def test_a_cursor_older_than_the_ring_gets_a_snapshot() -> None:
    board_rows = [{"seq": n, "ended": float(n), "id": f"1:{n}"} for n in range(5, 9)]
    view: dict[str, Any] = {"time": 0, "worker": 1, "open": [], "totals": {}}
    view["finished"] = {1: board_rows}
    text, cursor = _status.compose(view, {1: 2})  # 3 and 4 are no longer kept
    assert text.startswith(b"event: snapshot\n")
    assert cursor == {1: 8}
    text, cursor = _status.compose(view, {1: 6})
    assert text.startswith(b"event: update\n")
    (event,) = Decoder().feed(text)
    assert [r["seq"] for r in json.loads(event.data)["finished"]] == [7, 8]
    assert event.id == "1:8"


@pytest.mark.anyio
async def test_open_streams_show_live_counts_then_finish_with_their_outcome() -> None:
    cut = anyio.Event()

    async def slow(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD)
        for n in range(4):
            await stream.send(chunk(b"data: %d\n\n" % n))
        await cut.wait()  # then the connection closes with no last chunk: a cut

    async with deadline(30) as tg:
        upstream, _ = await start_upstream(tg, slow)
        base = await start_proxy(tg, upstream)
        async with httpx.AsyncClient(timeout=10) as client:

            async def reader() -> None:
                with pytest.raises(httpx.HTTPError):
                    async with client.stream("GET", base + "/v1/slow") as r:
                        async for _ in r.aiter_bytes():
                            pass

            tg.start_soon(reader)
            decoder: Decoder[Event] = Decoder()
            open_row: dict[str, Any] | None = None
            finished: list[dict[str, Any]] = []
            async with client.stream("GET", base + "/_ssekit/events") as response:
                async for piece in response.aiter_bytes():
                    for event in decoder.feed(piece):
                        if event.event not in ("snapshot", "update"):
                            continue
                        message = json.loads(event.data)
                        rows = [r for r in message["open"] if r["path"] == "/v1/slow"]
                        if rows and rows[0]["events"] == 4 and open_row is None:
                            open_row = rows[0]
                            cut.set()
                        finished += [r for r in message["finished"] if r["path"] == "/v1/slow"]
                    if finished:
                        break
    assert open_row is not None
    assert open_row["status"] == 200
    assert open_row["method"] == "GET"
    assert open_row["bytes"] == 4 * len(b"data: 0\n\n")
    assert open_row["last_event"] is not None
    (row,) = finished
    assert row["id"] == open_row["id"]
    assert row["outcome"] == "upstream_cut"
    assert row["events"] == 4


@pytest.mark.anyio
async def test_a_subscriber_that_reads_nothing_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    # Updates of ~60 KB every 20 ms (20 open streams with long paths): the socket buffers
    # fill within a second or two, then the write waits, then the subscriber is dropped.
    monkeypatch.setattr(_status, "DROP_AFTER", 1.0)
    monkeypatch.setattr(_status, "TICK", 0.02)
    release = anyio.Event()

    async def holding(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD + chunk(b"data: 1\n\n"))
        await release.wait()
        await stream.send(LAST_CHUNK)

    async with deadline(40) as tg:
        upstream, _ = await start_upstream(tg, holding)
        base = await start_proxy(tg, upstream)
        long_path = "/v1/" + "x" * 3000
        async with httpx.AsyncClient(timeout=10) as client:

            async def hold() -> None:
                async with httpx.AsyncClient(timeout=30) as one:
                    async with one.stream("GET", base + long_path) as r:
                        async for _ in r.aiter_bytes():
                            pass

            for _ in range(20):
                tg.start_soon(hold)
            host, port = base.removeprefix("http://").split(":")
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((host, int(port)))
            try:
                sock.sendall(b"GET /_ssekit/events HTTP/1.1\r\nhost: x\r\n\r\n")
                feeds = []
                for _ in range(150):
                    await anyio.sleep(0.1)
                    feeds.append(await active_requests(client, base) - 20)
                    if 1 in feeds and feeds[-1] == 0:
                        break
                assert 1 in feeds  # the feed was served
                assert feeds[-1] == 0  # then let go of, its socket unread
            finally:
                sock.close()
                release.set()


async def active_requests(client: httpx.AsyncClient, base: str) -> int:
    text = (await client.get(base + "/_ssekit/metrics")).text
    (line,) = [x for x in text.splitlines() if x.startswith("ssekit_active_requests ")]
    return int(line.split()[1]) - 1  # less this scrape


@pytest.mark.anyio
async def test_the_page_and_feed_need_the_admin_token_when_one_is_set() -> None:
    async with deadline(30) as tg:
        upstream, _ = await start_upstream(tg, quick)
        base = await start_proxy(tg, upstream, admin_tokens=("s3cret",))
        async with httpx.AsyncClient(timeout=10) as client:
            for path in ("/_ssekit/", "/_ssekit/events"):
                r = await client.get(base + path)
                assert r.status_code == 401
                assert r.headers["www-authenticate"].startswith("Basic")
                r = await client.get(base + path, headers={"authorization": "Bearer wrong"})
                assert r.status_code == 401
            basic = "Basic " + base64.b64encode(b"ops:s3cret").decode()
            r = await client.get(base + "/_ssekit/", headers={"authorization": basic})
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/html")
            assert "default-src 'none'" in r.headers["content-security-policy"]
            bearer = {"authorization": "Bearer s3cret"}
            (first,) = await feed_messages(client, base + "/_ssekit/events", 1, bearer)
            assert first.event == "snapshot"


@pytest.mark.anyio
async def test_the_page_is_self_contained() -> None:
    async with deadline(30) as tg:
        upstream, _ = await start_upstream(tg, quick)
        base = await start_proxy(tg, upstream, admin_prefix="/ops")
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.get(base + "/ops/")
    assert r.status_code == 200
    page = r.text
    for external in ("src=", "@import", "url(", "http:", "https:"):
        assert external not in page, external  # no script, style, font or image from elsewhere
    assert re.findall(r'href="([^"]*)"', page) == ["data:,"]  # the icon: none to fetch
    assert 'new EventSource("events")' in page


def test_with_two_workers_the_feed_shows_every_workers_streams() -> None:
    mock = spawn("mock-upstream", "--listen", "127.0.0.1:0", "--delay", "0.1")
    try:
        upstream = listening(mock, "mock")
        proc = spawn("proxy", "--upstream", upstream, "--listen", "127.0.0.1:0", "--workers", "2")
        try:
            base = listening(proc, "proxy")

            def stream() -> None:
                with httpx.Client(timeout=20) as one:
                    with one.stream("POST", base + "/v1/chat/completions", json=CHAT) as r:
                        for _ in r.iter_bytes():
                            pass

            threads = [threading.Thread(target=stream) for _ in range(12)]
            for thread in threads:
                thread.start()
            time.sleep(0.5)
            workers: set[str] = set()
            alive = 0
            give_up = time.monotonic() + 10
            with httpx.Client(timeout=20) as client:
                with client.stream("GET", base + "/_ssekit/events") as r:
                    decoder: Decoder[Event] = Decoder()
                    for piece in r.iter_bytes():
                        for event in decoder.feed(piece):
                            if event.event in ("snapshot", "update"):
                                message = json.loads(event.data)
                                workers |= {row["id"].split(":")[0] for row in message["open"]}
                                alive = message["totals"]["workers_alive"]
                        if len(workers) == 2 or time.monotonic() > give_up:
                            break
            for thread in threads:
                thread.join(timeout=20)
        finally:
            proc.send_signal(signal.SIGTERM)
            finish(proc)
    finally:
        mock.kill()
        finish(mock)
    assert len(workers) == 2, workers
    assert alive == 2
