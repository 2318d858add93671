"""Resumable streams end to end over loopback, memory store: drop, resume, replay, limits."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from unittest.mock import ANY

import anyio
import anyio.abc
import httpx
import pytest
from _resume_helpers import (
    RedisServer,
    Resumed,
    error_of,
    redis_server,
    resume,
    start_chat,
    wait_for,
)
from _servers import (
    LAST_CHUNK,
    SSE_HEAD,
    Seen,
    chunk,
    deadline,
    parse_chunked,
    raw_exchange,
    start_mock,
    start_proxy,
    start_upstream,
    wait_closed,
)
from redis import Redis

import ssekit
from ssekit.proxy._mock import mock_text

# Every test on both HTTP/1.1 engines: the proxy and mock _servers starts run on it.
pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("http_engine")]


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> str:
    """The --resume-store value: the memory store, or a real redis-server's URL (emptied
    first: a test run again, on the other HTTP engine, reuses its stream ids)."""
    if request.param == "memory":
        return "memory"
    server: RedisServer = request.getfixturevalue("redis")
    client = Redis.from_url(server.url)
    try:
        client.flushdb()
    finally:
        client.close()
    return server.url


def access_log(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    """The proxy's access log lines (``log_format="json"``), parsed."""
    lines = []
    for record in caplog.records:
        if record.name == "ssekit.proxy" and record.levelno == logging.INFO:
            line = json.loads(record.getMessage())
            assert isinstance(line, dict)
            lines.append(line)
    return lines


def text_of(events: list[ssekit.Event]) -> str:
    return ssekit.join_deltas(ssekit.iter_chunks(iter(events)))


async def test_dropped_answer_resumes_whole_on_the_same_instance() -> None:
    async with deadline(20) as tg:
        mock = await start_mock(tg, tokens=30, delay=0.01)
        base = await start_proxy(tg, mock, resume_store="memory")
        async with httpx.AsyncClient(timeout=10) as client:
            stream_id, seen = await start_chat(client, base, 5)
        resumed = await resume(base, stream_id)
        assert resumed.status == 200
        assert resumed.complete
        assert resumed.events[:5] == [
            ssekit.Event(data=e.data, id=str(n)) for n, e in enumerate(seen, 1)
        ]
        count = len(resumed.events)
        assert [e.id for e in resumed.events] == [str(n) for n in range(1, count + 1)]
        assert resumed.events[-1].data == "[DONE]"
        assert text_of(resumed.events) == mock_text(30)


def numbered(count: int) -> list[bytes]:
    return [b"data: event %d \xe4\xbd\xa0\xe5\xa5\xbd\n\n" % n for n in range(1, count + 1)]


def slow_upstream(
    pieces: list[bytes], delay: float, *, hold: bool = False
) -> Callable[[anyio.abc.SocketStream, Seen], Awaitable[None]]:
    """An SSE upstream sending ``pieces`` ``delay`` apart, then the last chunk (or, with
    ``hold``, waiting for the proxy to close the connection)."""

    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD)
        for piece in pieces:
            await stream.send(chunk(piece))
            seen.sent += 1
            await anyio.sleep(delay)
        if hold:
            await wait_closed(stream, seen)
        else:
            await stream.send(LAST_CHUNK)
            await wait_closed(stream, seen)

    return script


async def drop_after(base: str, events: int, headers: dict[str, str] | None = None) -> str:
    """GET the upstream's stream through the proxy, read ``events`` events, drop it."""
    async with httpx.AsyncClient(timeout=10) as client:
        seen = []
        async with client.stream("GET", base + "/stream", headers=headers or {}) as response:
            stream_id = response.headers["ssekit-stream-id"]
            async for event in ssekit.aiter_events(response.aiter_bytes()):
                seen.append(event)
                if len(seen) == events:
                    break
    return stream_id


async def test_resumes_from_every_position_give_each_event_exactly_once() -> None:
    pieces = numbered(12)
    async with deadline(30) as tg:
        upstream, _ = await start_upstream(tg, slow_upstream(pieces, 0.01))
        base = await start_proxy(tg, upstream, resume_store="memory")
        stream_id = await drop_after(base, 2)
        whole = await resume(base, stream_id)
        assert whole.complete
        assert len(whole.events) == 12
        assert [e.data for e in whole.events] == [f"event {n} 你好" for n in range(1, 13)]
        for after in range(13):
            header = await resume(base, stream_id, last_event_id=str(after))
            query = await resume(base, stream_id, query=f"?last_event_id={after}")
            assert header.events == query.events == whole.events[after:]
            assert header.complete
            assert query.complete
        # A chain of drops and resumes, each from the last id seen, as EventSource does.
        got: list[ssekit.Event] = []
        while True:
            last = got[-1].id if got else None
            part = await resume(base, stream_id, last_event_id=last, stop_after=5)
            got += part.events
            if part.complete:
                break
        assert got == whole.events


async def test_a_stream_flows_on_after_its_client_left_and_is_read_live(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pieces = numbered(20)
    async with deadline(30) as tg:
        upstream, seen = await start_upstream(tg, slow_upstream(pieces, 0.05))
        caplog.set_level(logging.INFO, "ssekit.proxy")
        base = await start_proxy(
            tg, upstream, resume_store="memory", resume_grace=5, log_format="json"
        )
        stream_id = await drop_after(base, 2)
        dropped_at = seen.sent
        resumed = await resume(base, stream_id, last_event_id="2")
        assert resumed.complete
        assert [e.id for e in resumed.events] == [str(n) for n in range(3, 21)]
        assert seen.sent == 20
        assert dropped_at < 10  # the upstream was not closed on the drop
        # The original exchange's one log line: its stream id, and that its client left.
        await wait_for(lambda: any(line.get("detached") for line in access_log(caplog)))
        (line,) = [line for line in access_log(caplog) if line.get("detached")]
        assert line["stream_id"] == stream_id
        assert line["outcome"] == "complete"


async def test_two_readers_at_once_each_get_every_event() -> None:
    pieces = numbered(15)
    async with deadline(30) as tg:
        upstream, _ = await start_upstream(tg, slow_upstream(pieces, 0.03))
        base = await start_proxy(tg, upstream, resume_store="memory")
        stream_id = await drop_after(base, 1)
        results: list[Resumed] = []

        async def read() -> None:
            results.append(await resume(base, stream_id))

        async with anyio.create_task_group() as readers:
            readers.start_soon(read)
            readers.start_soon(read)
        assert [r.complete for r in results] == [True, True]
        assert results[0].events == results[1].events
        assert [e.id for e in results[0].events] == [str(n) for n in range(1, 16)]


def cuts(caplog: pytest.LogCaptureFixture, stream_id: str) -> tuple[object, object]:
    """The ``cut`` fields of a stream's log lines: its own exchange's, and its reader's."""
    lines = access_log(caplog)
    (owner,) = [line for line in lines if line.get("stream_id") == stream_id]
    path = f"/_ssekit/streams/{stream_id}"
    reader = [line for line in lines if line["path"] == path and line["method"] == "GET"]
    return owner.get("cut"), reader[0].get("cut")


async def test_grace_expiry_closes_the_upstream_and_the_stream_reads_as_cut(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "ssekit.proxy")
    async with deadline(30) as tg:
        upstream, seen = await start_upstream(tg, slow_upstream(numbered(3), 0.01, hold=True))
        base = await start_proxy(
            tg, upstream, resume_store="memory", resume_grace=0.5, error_event=True,
            log_format="json",
        )  # fmt: skip
        stream_id = await drop_after(base, 3)
        dropped = time.monotonic()
        await wait_for(lambda: seen.closed_at, within=5)
        assert 0.4 <= seen.closed_at[0] - dropped < 3.0  # grace, then closed at once
        resumed = await resume(base, stream_id)
        assert not resumed.complete
        assert [e.data for e in resumed.events[:3]] == [f"event {n} 你好" for n in (1, 2, 3)]
        assert resumed.events[3].event == "error"  # --error-event applies
        assert json.loads(resumed.events[3].data)["error"]["type"] == "proxy_error"
    # Both log lines say which cut it was (issue 19.2).
    assert cuts(caplog, stream_id) == ("grace_expired", "grace_expired")


async def test_an_upstream_failure_is_the_cut_both_log_lines_name(
    caplog: pytest.LogCaptureFixture, store: str
) -> None:
    async def cut_short(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD + chunk(b"data: one\n\n") + chunk(b"data: two\n\n"))
        await anyio.sleep(0.2)  # then the connection drops without the last chunk

    caplog.set_level(logging.INFO, "ssekit.proxy")
    async with deadline(30) as tg:
        upstream, _ = await start_upstream(tg, cut_short)
        base = await start_proxy(tg, upstream, resume_store=store, log_format="json")
        async with httpx.AsyncClient(timeout=10) as client:
            async with client.stream("GET", base + "/stream") as response:
                stream_id = response.headers["ssekit-stream-id"]
                with pytest.raises(httpx.RemoteProtocolError):
                    await response.aread()
        resumed = await resume(base, stream_id)
    assert not resumed.complete
    assert [e.data for e in resumed.events] == ["one", "two"]
    assert cuts(caplog, stream_id) == ("upstream_failure", "upstream_failure")


async def test_an_attached_reader_keeps_the_upstream_going_past_the_grace() -> None:
    async with deadline(30) as tg:
        upstream, seen = await start_upstream(tg, slow_upstream(numbered(30), 0.05))
        base = await start_proxy(tg, upstream, resume_store="memory", resume_grace=0.2)
        stream_id = await drop_after(base, 1)
        resumed = await resume(base, stream_id)  # 1.5 s of stream, grace 0.2 s
        assert resumed.complete
        assert len(resumed.events) == 30
        assert seen.sent == 30


async def test_delete_stops_the_upstream_now_and_cuts_the_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "ssekit.proxy")
    async with deadline(30) as tg:
        upstream, seen = await start_upstream(tg, slow_upstream(numbered(2), 0.01, hold=True))
        base = await start_proxy(
            tg, upstream, resume_store="memory", resume_grace=60, log_format="json"
        )
        async with httpx.AsyncClient(timeout=10) as client:
            # The original client is still reading: DELETE is a stop button all the same.
            async with client.stream("GET", base + "/stream") as response:
                stream_id = response.headers["ssekit-stream-id"]
                await wait_for(lambda: seen.sent == 2)
                deleted = await client.delete(f"{base}/_ssekit/streams/{stream_id}")
                assert deleted.status_code == 204
                asked = time.monotonic()
                with pytest.raises(httpx.RemoteProtocolError):
                    await response.aread()  # the original response is cut, not ended
            await wait_for(lambda: seen.closed_at, within=5)
            assert seen.closed_at[0] - asked < 1.0
            resumed = await resume(base, stream_id)
            assert not resumed.complete
            assert len(resumed.events) == 2
            assert cuts(caplog, stream_id) == ("deleted", "deleted")
            # DELETE again removes the ended stream; then it is unknown.
            assert (await client.delete(f"{base}/_ssekit/streams/{stream_id}")).status_code == 204
            gone = await resume(base, stream_id)
            assert gone.status == 404
            assert (await client.delete(f"{base}/_ssekit/streams/{stream_id}")).status_code == 404


async def test_an_ended_stream_expires_after_the_ttl(store: str) -> None:
    async with deadline(30) as tg:
        upstream, _ = await start_upstream(tg, slow_upstream(numbered(2), 0))
        base = await start_proxy(tg, upstream, resume_store=store, resume_ttl=0.3)
        stream_id = await drop_after(base, 2)
        assert (await resume(base, stream_id)).complete
        await anyio.sleep(0.6)
        expired = await resume(base, stream_id)
        assert expired.status == 404
        assert error_of(expired)["code"] == 404


async def test_bad_ids_get_400_and_unknown_streams_404_as_openai_errors() -> None:
    async with deadline(30) as tg:
        upstream, _ = await start_upstream(tg, slow_upstream(numbered(3), 0))
        base = await start_proxy(tg, upstream, resume_store="memory")
        stream_id = await drop_after(base, 3)
        for bad in ("-1", "4", "abc", "", "1.5"):
            refused = await resume(base, stream_id, last_event_id=bad)
            assert refused.status == 400, bad
            error = json.loads(refused.body)["error"]
            assert error["type"] == "invalid_request_error"
            assert error["code"] == 400
        refused = await resume(base, stream_id, query="?last_event_id=-1")
        assert refused.status == 400
        # Thousands of digits (past int()'s 4300): a 400 too, never an internal error.
        for long in (
            await resume(base, stream_id, last_event_id="9" * 5000),
            await resume(base, stream_id, query="?last_event_id=" + "9" * 5000),
        ):
            assert long.status == 400
            assert error_of(long)["code"] == 400
        unknown = await resume(base, "no-such-stream")
        assert unknown.status == 404
        assert json.loads(unknown.body)["error"]["code"] == 404


async def test_a_key_from_another_client_token_is_refused(store: str) -> None:
    async with deadline(30) as tg:
        upstream, _ = await start_upstream(tg, slow_upstream(numbered(3), 0))
        base = await start_proxy(
            tg, upstream, resume_store=store, client_tokens=("tok-a", "tok-b"), pool_size=0
        )
        mine = {"Authorization": "Bearer tok-a"}
        stream_id = await drop_after(base, 3, headers={**mine, "ssekit-resume-key": "chat-1"})
        assert stream_id == "chat-1"
        assert (await resume(base, "chat-1", headers=mine)).complete
        theirs = await resume(base, "chat-1", headers={"Authorization": "Bearer tok-b"})
        assert theirs.status == 404
        nobody = await resume(base, "chat-1")
        assert nobody.status == 401
        async with httpx.AsyncClient() as client:
            url = f"{base}/_ssekit/streams/chat-1"
            forbidden = await client.delete(url, headers={"Authorization": "Bearer tok-b"})
            assert forbidden.status_code == 404
        # The same key under the other token is that token's own stream.
        other = await drop_after(
            base, 3, headers={"Authorization": "Bearer tok-b", "ssekit-resume-key": "chat-1"}
        )
        assert other == "chat-1"


async def test_a_key_in_use_is_never_taken_over(store: str) -> None:
    """Issue 20.2: without tokens, a second request with the key of a live or kept stream
    is a 409 (nothing goes upstream), never a replacement; DELETE frees the key."""

    async def tagged(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        request = len(seen.requests)  # each answer says which request it answers
        await stream.send(SSE_HEAD)
        for n in range(1, 4):
            await stream.send(chunk(b"data: request %d event %d\n\n" % (request, n)))
            await anyio.sleep(0.05)
        await stream.send(LAST_CHUNK)
        await wait_closed(stream, seen)

    key = {"ssekit-resume-key": "chat-7"}
    async with deadline(30) as tg:
        upstream, seen = await start_upstream(tg, tagged)
        base = await start_proxy(tg, upstream, resume_store=store, pool_size=0)
        async with httpx.AsyncClient(timeout=10) as client:
            async with client.stream("GET", base + "/stream", headers=key) as victim:
                assert victim.headers["ssekit-stream-id"] == "chat-7"
                live = await client.get(base + "/stream", headers=key)  # while it is live
                victim_events = [e async for e in ssekit.aiter_events(victim.aiter_bytes())]
            kept = await client.get(base + "/stream", headers=key)  # ended, still kept
            resumed = await resume(base, "chat-7")
            assert len(seen.requests) == 1  # neither second request went upstream
            assert (await client.delete(base + "/_ssekit/streams/chat-7")).status_code == 204
            async with client.stream("GET", base + "/stream", headers=key) as fresh:
                assert fresh.status_code == 200
                assert fresh.headers["ssekit-stream-id"] == "chat-7"
                await fresh.aread()
    for refused in (live, kept):
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == 409
        assert "ssekit-stream-id" not in refused.headers
    assert [e.data for e in victim_events] == [f"request 1 event {n}" for n in (1, 2, 3)]
    assert [e.data for e in resumed.events] == [e.data for e in victim_events]
    assert resumed.complete


async def test_a_key_whose_answer_was_not_kept_is_free_again(store: str) -> None:
    async def json_answer(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json"
                          b"\r\ncontent-length: 2\r\n\r\n{}")  # fmt: skip

    key = {"ssekit-resume-key": "retry-me"}
    async with deadline(30) as tg:
        upstream, seen = await start_upstream(tg, json_answer)
        base = await start_proxy(tg, upstream, resume_store=store, pool_size=0)
        unreachable = await start_proxy(tg, "http://127.0.0.1:1", resume_store=store, retries=0)
        async with httpx.AsyncClient(timeout=10) as client:
            statuses = [(await client.get(base + "/x", headers=key)).status_code for _ in "12"]
            failed = [(await client.get(unreachable + "/x", headers=key)).status_code for _ in "12"]
    assert statuses == [429, 429]  # the client may retry with its key
    assert len(seen.requests) == 2
    assert failed == [502, 502]  # a failure before any answer frees the key too


async def test_the_resume_key_header_is_checked_and_not_sent_upstream() -> None:
    async with deadline(30) as tg:
        upstream, seen = await start_upstream(tg, slow_upstream(numbered(2), 0))
        base = await start_proxy(tg, upstream, resume_store="memory")
        async with httpx.AsyncClient() as client:
            for bad in (b"", b"a/b", b"x" * 129, "ключ".encode(), b"a b"):
                response = await client.get(base + "/stream", headers={"ssekit-resume-key": bad})
                assert response.status_code == 400
                assert response.json()["error"]["code"] == 400
        assert seen.requests == []  # nothing went upstream
        assert await drop_after(base, 2, headers={"ssekit-resume-key": "answer-7"}) == "answer-7"
        assert seen.header(b"ssekit-resume-key") is None


async def test_past_max_bytes_the_client_gets_everything_but_the_stream_is_not_resumable(
    caplog: pytest.LogCaptureFixture, store: str
) -> None:
    pieces = numbered(40)  # about 25 bytes each: 1000 bytes
    async with deadline(30) as tg:
        upstream, seen = await start_upstream(tg, slow_upstream(pieces, 0.005, hold=True))
        base = await start_proxy(tg, upstream, resume_store=store, resume_max_bytes=300)
        async with httpx.AsyncClient(timeout=10) as client:
            async with client.stream("GET", base + "/stream") as response:
                stream_id = response.headers["ssekit-stream-id"]
                events = []
                async for event in ssekit.aiter_events(response.aiter_bytes()):
                    events.append(event)
                    if len(events) == 40:
                        break
            assert [e.data for e in events] == [f"event {n} 你好" for n in range(1, 41)]
            # Not resumable any more: dropping the client closes the upstream at once.
            await wait_for(lambda: seen.closed_at, within=2)
            refused = await resume(base, stream_id)
            assert refused.status == 404
            assert error_of(refused)["code"] == 404
            metrics = (await client.get(base + "/_ssekit/metrics")).text
        assert "ssekit_resume_given_up_total 1" in metrics
        # One warning: this stream (the record's first argument) is no longer resumable.
        given_up = [
            r for r in caplog.records if r.name == "ssekit.proxy" and r.levelno == logging.WARNING
        ]
        assert [r.args for r in given_up] == [(stream_id, ANY)]


async def test_the_original_client_gets_the_same_bytes_and_chunks_with_the_store_on() -> None:
    pieces = [
        b"data: \xe4\xbd\xa0\xe5",
        b"\xa5\xbd\r",
        b"\n\r\n",
        b": hb\n\nid: 9\nda",
        b"ta: x\n\n",
    ]
    async with deadline(30) as tg:
        upstream, _ = await start_upstream(tg, slow_upstream(pieces, 0.01))
        off_base = await start_proxy(tg, upstream)
        bases = [off_base, await start_proxy(tg, upstream, resume_store="memory")]
        request = b"GET /s HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n"
        off, on = [await raw_exchange(base, request) for base in bases]
        assert parse_chunked(off.partition(b"\r\n\r\n")[2]) == (pieces, True)
        assert parse_chunked(on.partition(b"\r\n\r\n")[2]) == (pieces, True)
        assert b"ssekit-stream-id" not in off
        assert b"ssekit-stream-id: " in on
        stream_id = on.partition(b"ssekit-stream-id: ")[2].partition(b"\r\n")[0].decode()
        resumed = await resume(bases[1], stream_id)
        assert [(e.data, e.id) for e in resumed.events] == [("你好", "1"), ("x", "2")]


async def test_with_the_store_off_nothing_changes() -> None:
    async with deadline(30) as tg:
        upstream, seen = await start_upstream(tg, slow_upstream(numbered(2), 0.01, hold=True))
        base = await start_proxy(tg, upstream)
        client = await anyio.connect_tcp("127.0.0.1", int(base.rsplit(":", 1)[1]))
        await client.send(b"GET / HTTP/1.1\r\nHost: x\r\nssekit-resume-key: a/b\r\n\r\n")
        received = b""
        while b"event 2" not in received:
            received += await client.receive()
        assert b"ssekit-stream-id" not in received
        await client.aclose()
        closed = time.monotonic()
        await wait_for(lambda: seen.closed_at, within=2, step=0.001)
        assert seen.closed_at[0] - closed < 0.5  # closed at once, as always
        assert seen.header(b"ssekit-resume-key") == b"a/b"  # not ours to read: forwarded
        async with httpx.AsyncClient() as http:
            response = await http.get(base + "/_ssekit/streams/abc")
            assert response.status_code == 404
            assert "ssekit_resume" not in (await http.get(base + "/_ssekit/metrics")).text


async def test_responses_that_are_not_200_event_streams_are_not_kept() -> None:
    async def script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                          b"content-length: 2\r\n\r\n{}")  # fmt: skip

    async with deadline(30) as tg:
        upstream, _ = await start_upstream(tg, script)
        base = await start_proxy(tg, upstream, resume_store="memory")
        async with httpx.AsyncClient() as client:
            response = await client.get(base + "/json")
            assert response.json() == {}
            assert "ssekit-stream-id" not in response.headers
