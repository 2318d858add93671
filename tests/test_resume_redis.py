"""Resumable streams across proxy instances sharing Debian's redis-server (no fake Redis).

Each test's Redis is started on a free loopback port without persistence and stopped
after; instances are in-process proxies, or a real ``ssekit proxy`` process where the
test kills it.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import anyio
import httpx
import openai
import pytest
import redis.asyncio as aioredis
from _resume_helpers import (
    RedisServer,
    Resumed,
    error_of,
    free_port,
    redis_server,
    resume,
    wait_for,
)
from _servers import deadline, start_mock, start_proxy, start_upstream
from test_resume_e2e import access_log, drop_after, numbered, slow_upstream

import ssekit
from ssekit.proxy._mock import mock_text
from ssekit.proxy._resume import _records
from ssekit.proxy._resume._endpoint import UNAVAILABLE
from ssekit.proxy._resume._redis import LIVENESS_EVERY, LIVENESS_TTL, RedisStore

# Every test on both HTTP/1.1 engines: the proxy and mock _servers starts run on it.
pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("http_engine")]

#: A dead owner shows as a cut within its liveness key's lifetime plus one check.
OWNER_DEATH_SEEN_WITHIN = LIVENESS_TTL + LIVENESS_EVERY


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


#: How late the slowed store writes (seconds): far more than the upstream's event spacing.
SLOW_WRITE = 0.4


@pytest.fixture
def slow_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every instance's Redis writes land SLOW_WRITE late, as under load: what the client
    was sent is ahead of what the store has."""
    write = RedisStore._write

    async def late(self: RedisStore, ops: list[object]) -> None:
        await anyio.sleep(SLOW_WRITE)
        await write(self, ops)  # type: ignore[arg-type]

    monkeypatch.setattr(RedisStore, "_write", late)


async def test_a_stream_id_resolves_on_another_instance_from_the_response_head_on(
    redis: RedisServer, slow_store: None
) -> None:
    """Issue 19.1: an id the proxy handed out never gets a 404 (the head waits for the
    store to have the stream, not for its events)."""
    async with deadline(40) as tg:
        upstream, _ = await start_upstream(tg, slow_upstream(numbered(5), 0.05))
        a = await start_proxy(tg, upstream, resume_store=redis.url)
        b = await start_proxy(tg, upstream, resume_store=redis.url)
        async with httpx.AsyncClient(timeout=10) as client:
            async with client.stream("GET", a + "/stream") as response:
                stream_id = response.headers["ssekit-stream-id"]
                at_once = await resume(b, stream_id, stop_after=1)
                await response.aread()
        assert at_once.status == 200
        assert [e.id for e in at_once.events] == ["1"]


async def test_a_position_the_client_was_sent_is_never_refused_on_another_instance(
    redis: RedisServer, slow_store: None
) -> None:
    """Issue 19.1: the client read 7 events from A before the store had them; B serves
    from 7 on (waiting for the store to catch up), never a 400."""
    async with deadline(40) as tg:
        upstream, _ = await start_upstream(tg, slow_upstream(numbered(12), 0.01))
        a = await start_proxy(tg, upstream, resume_store=redis.url)
        b = await start_proxy(tg, upstream, resume_store=redis.url)
        stream_id = await drop_after(a, 7)
        header = await resume(b, stream_id, last_event_id="7")
        query = await resume(b, stream_id, query="?last_event_id=12")
        late = await resume(b, stream_id, last_event_id="13")  # never sent: still a 400
    assert header.status == 200
    assert header.complete
    assert [e.id for e in header.events] == [str(n) for n in range(8, 13)]
    assert (query.status, query.events, query.complete) == (200, [], True)
    assert late.status == 400
    assert error_of(late)["code"] == 400


async def test_openai_client_dropped_on_one_instance_reads_the_answer_whole_on_another(
    redis: RedisServer,
) -> None:
    async with deadline(40) as tg:
        mock = await start_mock(tg, tokens=40, delay=0.02)
        a = await start_proxy(tg, mock, resume_store=redis.url)
        b = await start_proxy(tg, mock, resume_store=redis.url)
        sdk = openai.AsyncOpenAI(base_url=a + "/v1", api_key="sk-unused", max_retries=0)
        stream = await sdk.chat.completions.create(
            model="ssekit-mock",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_headers={"ssekit-resume-key": "message-42"},  # the page's own id
        )
        seen = ""
        async for part in stream:
            seen += part.choices[0].delta.content or "" if part.choices else ""
            if len(seen) > 10:
                break
        await stream.close()  # the phone lost its network mid-answer
        await sdk.close()
        resumed = await resume(b, "message-42")
        assert resumed.complete
        text = ssekit.join_deltas(ssekit.iter_chunks(iter(resumed.events)))
        assert text == mock_text(40)
        assert text.startswith(seen)


async def test_readers_on_two_instances_get_the_replay_and_the_live_tail(
    redis: RedisServer,
) -> None:
    async with deadline(40) as tg:
        upstream, seen = await start_upstream(tg, slow_upstream(numbered(30), 0.04))
        a = await start_proxy(tg, upstream, resume_store=redis.url)
        b = await start_proxy(tg, upstream, resume_store=redis.url)
        stream_id = await drop_after(a, 3)
        results: dict[str, Resumed] = {}

        async def read(name: str, base: str, last: str | None) -> None:
            results[name] = await resume(base, stream_id, last_event_id=last)

        async with anyio.create_task_group() as readers:
            readers.start_soon(read, "a", a, None)
            readers.start_soon(read, "b", b, "2")
        assert seen.sent == 30
        assert results["a"].complete
        assert results["b"].complete
        assert [e.id for e in results["a"].events] == [str(n) for n in range(1, 31)]
        assert results["b"].events == results["a"].events[2:]
        assert results["b"].events[-1].data == "event 30 你好"
        # Every position, on the other instance, after the end.
        for after in range(0, 31, 3):
            part = await resume(b, stream_id, last_event_id=str(after))
            assert part.events == results["a"].events[after:]


async def test_grace_expiry_and_delete_reach_the_owner_through_redis(redis: RedisServer) -> None:
    async with deadline(40) as tg:
        upstream, seen = await start_upstream(tg, slow_upstream(numbered(2), 0.01, hold=True))
        a = await start_proxy(tg, upstream, resume_store=redis.url, resume_grace=0.5, pool_size=0)
        b = await start_proxy(tg, upstream, resume_store=redis.url)
        # Nobody attached: the grace runs out, the owner closes its upstream.
        stream_id = await drop_after(a, 2)
        dropped = time.monotonic()
        await wait_for(lambda: seen.closed_at, within=6)
        assert 0.4 <= seen.closed_at[0] - dropped < 0.5 + OWNER_DEATH_SEEN_WITHIN
        cut = await resume(b, stream_id)
        assert not cut.complete
        assert len(cut.events) == 2
        # A DELETE on B stops the stream A owns, while A's client is still reading.
        async with httpx.AsyncClient(timeout=10) as client:
            async with client.stream("GET", a + "/stream") as response:
                second = response.headers["ssekit-stream-id"]
                await wait_for(lambda: seen.sent == 4)
                deleted = await client.delete(f"{b}/_ssekit/streams/{second}")
                assert deleted.status_code == 204
                asked = time.monotonic()
                with pytest.raises(httpx.RemoteProtocolError):
                    await response.aread()
        await wait_for(lambda: len(seen.closed_at) == 2, within=5)
        assert seen.closed_at[1] - asked < LIVENESS_EVERY + 1.0
        assert not (await resume(b, second)).complete


def spawn_proxy(upstream: str, redis_url: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ssekit", "proxy", "--upstream", upstream,
         "--listen", "127.0.0.1:0", "--resume-store", redis_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    end = time.monotonic() + 20
    while time.monotonic() < end:
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", proc.stdout.readline())
        if match:
            return proc, match.group(1)
    proc.kill()
    raise AssertionError("the proxy did not start")


async def test_a_killed_owner_shows_as_a_cut_to_readers_elsewhere(
    redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "ssekit.proxy")
    async with deadline(60) as tg:
        upstream, _seen = await start_upstream(tg, slow_upstream(numbered(3), 0.01, hold=True))
        a, a_base = await anyio.to_thread.run_sync(spawn_proxy, upstream, redis.url)
        try:
            b = await start_proxy(tg, upstream, resume_store=redis.url, log_format="json")
            stream_id = await drop_after(a_base, 3)
            ended: list[float] = []
            results: list[Resumed] = []

            async def reader() -> None:
                results.append(await resume(b, stream_id))
                ended.append(time.monotonic())

            tg.start_soon(reader)
            await anyio.sleep(1.5)  # the reader replayed and waits on the live tail
            assert not ended
            a.kill()  # SIGKILL: no goodbye, the liveness key just stops being refreshed
            killed = time.monotonic()
            await wait_for(lambda: ended, within=OWNER_DEATH_SEEN_WITHIN + 3)
        finally:
            a.kill()
            a.wait(10)
            assert a.stdout is not None
            a.stdout.close()
        assert ended[0] - killed <= OWNER_DEATH_SEEN_WITHIN + 1.0
        assert not results[0].complete
        assert [e.data for e in results[0].events] == [f"event {n} 你好" for n in (1, 2, 3)]
        # The reader's log line says which cut it was (issue 19.2).
        path = f"/_ssekit/streams/{stream_id}"
        (line,) = [line for line in access_log(caplog) if line["path"] == path]
        assert line["cut"] == "owner_gone"


async def test_a_store_down_at_start_up_is_said_counted_and_no_id_is_handed_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "ssekit.proxy")
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with deadline(30) as tg:
        upstream, _ = await start_upstream(tg, slow_upstream(numbered(2), 0))
        base = await start_proxy(tg, upstream, resume_store=nowhere)
        async with httpx.AsyncClient(timeout=10) as client:
            # Checked before serving: the very first requests see it.
            health = (await client.get(base + "/_ssekit/health")).json()
            metrics = (await client.get(base + "/_ssekit/metrics")).text
            response = await client.get(base + "/stream", headers={"ssekit-resume-key": "k1"})
    assert health == {"status": "ok", "resume_store": "down"}
    assert re.search(r"^ssekit_resume_store_errors_total [1-9]$", metrics, re.MULTILINE)
    assert response.status_code == 200
    assert "ssekit-stream-id" not in response.headers
    assert response.headers["ssekit-not-resumable"] == "store-unavailable"
    (said,) = store_records(caplog, "resume_store")
    assert (said["resume_store"], said["at_start"], said["level"]) == ("down", True, logging.ERROR)
    assert said["store"] == nowhere


def test_the_banner_says_the_store_is_down_and_the_log_says_why_as_json() -> None:
    nowhere = f"redis://user:s3cret@127.0.0.1:{free_port()}/0"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ssekit", "proxy", "--listen", "127.0.0.1:0",
         "--resume-store", nowhere, "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        banner = []
        end = time.monotonic() + 20
        while time.monotonic() < end and not (banner and banner[-1].startswith("try:")):
            banner.append(proc.stdout.readline())
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    (store_line,) = [line for line in banner if line.startswith("resume store: ")]
    assert "DOWN" in store_line
    assert "s3cret" not in "".join(banner) + err  # the password is never printed
    said = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    down = [line for line in said if line.get("resume_store") == "down"]
    assert [(line["at_start"], line["store"]) for line in down] == [
        (True, "redis://user:***@127.0.0.1:" + nowhere.rsplit(":", 1)[1])
    ]


def store_records(caplog: pytest.LogCaptureFixture, field: str) -> list[dict[str, object]]:
    """The structured fields of the resume store's log records that carry ``field``."""
    found = []
    for record in caplog.records:
        fields = getattr(record, "ssekit", None)
        if record.name == "ssekit.proxy" and isinstance(fields, dict) and field in fields:
            found.append({**fields, "level": record.levelno})
    return found


@pytest.fixture
def quick_outages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Probe a failed store each 0.2-0.5 s, and call an outage over after 0.5 s of answers."""
    monkeypatch.setattr(_records, "PROBE_FIRST", 0.2)
    monkeypatch.setattr(_records, "PROBE_MAX", 0.5)
    monkeypatch.setattr(_records, "STEADY", 0.5)


async def test_redis_stopping_mid_stream_leaves_the_stream_whole_and_resume_503_until_back(
    redis: RedisServer, caplog: pytest.LogCaptureFixture, quick_outages: None
) -> None:
    caplog.set_level(logging.INFO, "ssekit.proxy")
    async with deadline(60) as tg:
        upstream, _seen = await start_upstream(tg, slow_upstream(numbered(40), 0.03))
        a = await start_proxy(tg, upstream, resume_store=redis.url, pool_size=0, log_format="json")
        idle = await start_proxy(tg, upstream, resume_store=redis.url, log_format="json")
        events: list[ssekit.Event] = []
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.get(a + "/_ssekit/health")).json() == {
                "status": "ok",
                "resume_store": "up",
            }
            async with client.stream("GET", a + "/stream") as response:
                stream_id = response.headers["ssekit-stream-id"]
                async for event in ssekit.aiter_events(response.aiter_bytes()):
                    events.append(event)
                    if len(events) == 5:
                        redis.stop()  # Redis goes away mid-stream
                        stopped = time.monotonic()
            # The original stream flowed on, whole, to its clean end.
            assert [e.data for e in events] == [f"event {n} 你好" for n in range(1, 41)]
            assert time.monotonic() - stopped < 3
            unavailable = await resume(a, stream_id)
            assert unavailable.status == 503
            # What the reader is told is the fixed sentence: no address, no driver error.
            assert error_of(unavailable) == {
                "message": UNAVAILABLE.message,
                "type": "proxy_error",
                "param": None,
                "code": 503,
            }
            metrics = (await client.get(a + "/_ssekit/metrics")).text
            assert re.search(r"ssekit_resume_store_errors_total [1-9]", metrics)
            # Health: forwarding is ok (a load balancer keeps the instance), the store down.
            for base in (a, idle):
                with anyio.fail_after(5):
                    while (health := (await client.get(base + "/_ssekit/health"))).json() != {
                        "status": "ok",
                        "resume_store": "down",
                    }:
                        await anyio.sleep(0.1)
                assert health.status_code == 200
            # New streams flow too, without a stream id while the store is away, and say
            # why; asking for a key changes nothing but the reason's log field.
            plain = await client.get(a + "/stream")
            keyed = await client.get(a + "/stream", headers={"ssekit-resume-key": "k-down"})
            for response in (plain, keyed):
                assert response.status_code == 200
                assert "ssekit-stream-id" not in response.headers
                assert response.headers["ssekit-not-resumable"] == "store-unavailable"
        unkept = [line for line in access_log(caplog) if "not_resumable" in line]
        assert [line["not_resumable"] for line in unkept] == ["store-unavailable"] * 2
        redis.start()
        # Back: within a probe new streams are kept and served again.
        with anyio.fail_after(10):
            while True:
                async with httpx.AsyncClient(timeout=10) as client:
                    response = await client.get(a + "/stream")
                if "ssekit-stream-id" in response.headers:
                    break
                await anyio.sleep(0.2)
        back = await resume(a, response.headers["ssekit-stream-id"])
        assert back.complete
        assert len(back.events) == 40
        # The stream cut off from the store is not served half: it is gone or cut.
        old = await resume(a, stream_id)
        assert old.status == 404 or not old.complete
        # Each instance, the idle one too, logged the outage once: down, then back.
        await wait_for(lambda: len(store_records(caplog, "resume_store")) == 4, within=5)
        await anyio.sleep(1.0)  # and nothing more (no flapping lines)
    said = store_records(caplog, "resume_store")
    assert len(said) == 4
    instances = {line["instance"] for line in said}
    assert len(instances) == 2
    for instance in instances:
        mine = [line for line in said if line["instance"] == instance]
        assert [(line["resume_store"], line["level"]) for line in mine] == [
            ("down", logging.ERROR),
            ("up", logging.WARNING),
        ]
    assert all(line["store"] == redis.url for line in said)


async def test_redis_refusing_writes_is_one_outage_backed_off_not_a_flap(
    redis: RedisServer, caplog: pytest.LogCaptureFixture, quick_outages: None
) -> None:
    """Issue 20.4: at maxmemory with noeviction Redis answers PING but refuses writes:
    one outage (one line down, one back), probed with writes, never flapping."""
    caplog.set_level(logging.INFO, "ssekit.proxy")
    admin = aioredis.Redis.from_url(redis.url)
    async with deadline(60) as tg:
        upstream, _ = await start_upstream(tg, slow_upstream(numbered(3), 0.01))
        a = await start_proxy(tg, upstream, resume_store=redis.url, pool_size=0)
        async with httpx.AsyncClient(timeout=10) as client:
            assert "ssekit-stream-id" in (await client.get(a + "/stream")).headers
            await admin.config_set("maxmemory-policy", "noeviction")
            await admin.config_set("maxmemory", 1)  # every write is refused (OOM)
            unkept = []
            for _ in range(16):  # 4 s of streams; the store is probed ~10 times meanwhile
                response = await client.get(a + "/stream")
                unkept.append(response.headers.get("ssekit-not-resumable"))
                await anyio.sleep(0.25)
            health = (await client.get(a + "/_ssekit/health")).json()
            failed = [r for r in caplog.records if r.name == "ssekit.proxy" and r.levelno >= 30]
            await admin.config_set("maxmemory", 0)
            with anyio.fail_after(10):
                while "ssekit-stream-id" not in (await client.get(a + "/stream")).headers:
                    await anyio.sleep(0.1)
            await wait_for(lambda: len(store_records(caplog, "resume_store")) == 2, within=5)
    await admin.aclose()
    # The first stream after the limit may have been taken before the write failed.
    assert unkept[1:] == ["store-unavailable"] * 15
    assert health == {"status": "ok", "resume_store": "down"}
    assert [(r.levelno, getattr(r, "ssekit", {}).get("resume_store")) for r in failed] == [
        (logging.ERROR, "down")
    ]
    said = store_records(caplog, "resume_store")
    assert [line["resume_store"] for line in said] == ["down", "up"]
    assert said[0]["error"] == "OutOfMemoryError"


async def test_a_stream_redis_evicted_is_told_from_one_that_never_existed(
    redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 20.4: with an evicting policy Redis drops a live stream's keys; the instance
    forwarding it notices, logs and counts it as evicted, and never recreates half of it."""
    caplog.set_level(logging.INFO, "ssekit.proxy")
    admin = aioredis.Redis.from_url(redis.url)
    async with deadline(60) as tg:
        upstream, seen = await start_upstream(tg, slow_upstream(numbered(40), 0.05))
        a = await start_proxy(tg, upstream, resume_store=redis.url)
        async with httpx.AsyncClient(timeout=10) as client:
            async with client.stream("GET", a + "/stream") as response:
                stream_id = response.headers["ssekit-stream-id"]
                await wait_for(lambda: seen.sent >= 5)
                run = (await admin.get(f"ssekit:k:-/{stream_id}")).decode()
                # What allkeys-lru does under pressure, to exactly these keys:
                await admin.delete(f"ssekit:k:-/{stream_id}", f"ssekit:m:{run}",
                                   f"ssekit:e:{run}")  # fmt: skip
                gone = await resume(a, stream_id)
                events = [e async for e in ssekit.aiter_events(response.aiter_bytes())]
            never = await resume(a, "never-existed")
            metrics = (await client.get(a + "/_ssekit/metrics")).text
        written = await admin.exists(f"ssekit:e:{run}")
        left = await admin.hgetall(f"ssekit:m:{run}")
        ttl = await admin.pttl(f"ssekit:m:{run}")
    await admin.aclose()
    assert len(events) == 40  # its client got its whole stream, untouched
    assert (gone.status, never.status) == (404, 404)
    assert re.search(r"^ssekit_resume_evicted_total 1$", metrics, re.MULTILINE)
    (evicted,) = store_records(caplog, "resume_evicted")
    assert (evicted["resume_evicted"], evicted["level"]) == (stream_id, logging.WARNING)
    assert not written  # no stream of events 7, 8, 9... without 1 to 6
    assert left.get(b"resumable", b"0") == b"0"
    assert ttl != -1  # whatever is left expires (volatile-* policies need a TTL on every key)
