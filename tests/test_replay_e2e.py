"""Record through the proxy (--record), replay anywhere: same bytes, same chunks, same pace.

A stream is recorded from a scripted upstream (irregular gaps, events and a UTF-8
character split across chunks) and from the mock; its replay (mock-upstream
--replay, the httpx transport, the ASGI app under uvicorn) is recorded again
through the proxy, or read piece by piece, and compared with the first cassette.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import time
from pathlib import Path

import anyio
import httpx
import openai
import pytest
from _servers import LAST_CHUNK, SSE_HEAD, chunk, deadline, start_mock, start_proxy, start_upstream
from _uvicorn import running

from ssekit import Event, iter_events
from ssekit.cassette import Cassette, Pace, load
from ssekit.proxy._replay import ReplayConfig, serve_replay
from ssekit.replay import ReplayApp, ReplayTransport

pytestmark = pytest.mark.anyio

CHAT = {"model": "gpt-test", "stream": True, "messages": [{"role": "user", "content": "hi"}]}

#: (gap before, chunk): events split across chunks, a CRLF and a 3-byte character cut.
SCRIPT: list[tuple[float, bytes]] = [
    (0.02, b'data: {"choices":[{"delta":{"content":"He'),
    (0.0, b'llo"}}]}\n\n'),
    (0.15, b'data: {"choices":[{"delta":{"content":"\xe4\xbd'),
    (0.06, b'\xa0\xe5\xa5\xbd"}}]}\r\n\r'),
    (0.2, b'\ndata: {"choices":[{"delta":{"content":" world"}}]}\n\ndata: {"choices":[{"delta"'),
    (0.08, b':{"content":"!"}}]}\n\n'),
    (0.12, b"data: [DONE]\n\n"),
]


def script_upstream(pieces: list[tuple[float, bytes]], *, cut: bool = False):  # type: ignore[no-untyped-def]
    async def script(stream, seen):  # type: ignore[no-untyped-def]
        await stream.send(SSE_HEAD)
        for gap, data in pieces:
            await anyio.sleep(gap)
            await stream.send(chunk(data))
        if not cut:
            await stream.send(LAST_CHUNK)
        else:
            await stream.aclose()

    return script


async def wait_cassettes(directory: Path, count: int, seconds: float = 5.0) -> list[Path]:
    """The finished cassettes once there are ``count`` of them (bounded wait)."""
    with anyio.fail_after(seconds):
        while len(found := sorted(directory.glob("*.jsonl"))) < count:  # noqa: ASYNC240
            await anyio.sleep(0.02)
    return found


async def record(
    tg: anyio.abc.TaskGroup, upstream: str, directory: Path, count: int, **settings: object
) -> tuple[bytes, Cassette]:
    """One chat request through a recording proxy: what the client got, the cassette."""
    proxy = await start_proxy(tg, upstream, record=str(directory), **settings)
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(proxy + "/v1/chat/completions", json=CHAT)
    paths = await wait_cassettes(directory, count)
    return response.content, load(paths[-1])


def chunks(cassette: Cassette) -> list[bytes]:
    return [c.data for c in cassette.chunks()]


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def assert_same_pace(recorded: list[float], replayed: list[float]) -> None:
    """Each gap of 50 ms or more within 40 ms of the recorded one (loaded 2-core machines);
    the whole stream within 80 ms."""
    assert len(recorded) == len(replayed)
    for was, now in zip(gaps(recorded), gaps(replayed), strict=True):
        if was >= 0.05:
            assert abs(now - was) < 0.04, (was, now)
    assert abs((replayed[-1] - replayed[0]) - (recorded[-1] - recorded[0])) < 0.08


@pytest.mark.usefixtures("http_engine")  # the splice path and the batch path
async def test_recording_keeps_bytes_chunks_and_gaps_and_does_not_change_the_stream(
    tmp_path: Path,
) -> None:
    async with deadline(20) as tg:
        upstream, _ = await start_upstream(tg, script_upstream(SCRIPT))
        got, cassette = await record(tg, upstream, tmp_path, 1)
    assert got == b"".join(data for _, data in SCRIPT)
    assert chunks(cassette) == [data for _, data in SCRIPT]
    times = [c.t for c in cassette.chunks()]
    wanted = [sum(gap for gap, _ in SCRIPT[: i + 1]) for i in range(len(SCRIPT))]
    for was, now in zip(gaps(wanted), gaps(times), strict=True):
        assert now >= was - 0.03  # not early, beyond the scheduling of two reads
    assert cassette.end is not None
    assert cassette.end.outcome == "complete"
    assert cassette.request.method == "POST"
    assert json.loads(cassette.request.body) == CHAT
    assert cassette.response.status == 200
    assert cassette.response.header("content-type") == "text/event-stream"


@pytest.mark.usefixtures("http_engine")  # the splice path and the batch path
async def test_mock_upstream_replay_gives_the_same_chunks_at_the_same_pace(
    tmp_path: Path,
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    async with deadline(30) as tg:
        upstream, _ = await start_upstream(tg, script_upstream(SCRIPT))
        original, cassette = await record(tg, upstream, first, 1)
        host, port = await tg.start(serve_replay, ReplayConfig(source=str(first), listen_port=0))
        replayed, again = await record(tg, f"http://{host}:{port}", second, 1)
    assert replayed == original
    assert chunks(again) == chunks(cassette)
    assert_same_pace([c.t for c in cassette.chunks()], [c.t for c in again.chunks()])
    assert again.end is not None
    assert again.end.outcome == "complete"


async def test_a_stream_from_the_mock_replays_identically(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    async with deadline(30) as tg:
        mock = await start_mock(tg, tokens=8, delay=0.06)
        original, cassette = await record(tg, mock, first, 1)
        host, port = await tg.start(serve_replay, ReplayConfig(source=str(first), listen_port=0))
        replayed, again = await record(tg, f"http://{host}:{port}", second, 1)
    assert replayed == original
    assert chunks(again) == chunks(cassette)
    assert_same_pace([c.t for c in cassette.chunks()], [c.t for c in again.chunks()])


async def test_rechunked_replay_gives_the_same_events(tmp_path: Path) -> None:
    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"
    async with deadline(30) as tg:
        upstream, _ = await start_upstream(tg, script_upstream(SCRIPT))
        original, cassette = await record(tg, upstream, first, 1)
        ones = ReplayConfig(source=str(first), listen_port=0, pace=Pace(speed=None, rechunk="1"))
        host, port = await tg.start(serve_replay, ones)
        bytewise, again = await record(tg, f"http://{host}:{port}", second, 1)
        randomly = ReplayConfig(
            source=str(first), listen_port=0, pace=Pace(speed=None, rechunk="random", seed=3)
        )
        host, port = await tg.start(serve_replay, randomly)
        shuffled, third_cassette = await record(tg, f"http://{host}:{port}", third, 1)
    assert bytewise == original == shuffled
    assert all(len(c) == 1 for c in chunks(again))
    assert len(chunks(again)) == len(original)
    assert chunks(third_cassette) != chunks(cassette)
    events = list(iter_events(chunks(cassette)))
    assert list(iter_events(chunks(again))) == events
    assert list(iter_events(chunks(third_cassette))) == events
    assert events[-1] == Event(data="[DONE]")


async def test_httpx_transport_answers_chunk_for_chunk_at_pace(tmp_path: Path) -> None:
    async with deadline(20) as tg:
        upstream, _ = await start_upstream(tg, script_upstream(SCRIPT))
        original, cassette = await record(tg, upstream, tmp_path, 1)
    transport = ReplayTransport(tmp_path)
    pieces: list[bytes] = []
    times: list[float] = []

    def read() -> None:
        with (
            httpx.Client(transport=transport, base_url="http://replay") as client,
            client.stream("POST", "/v1/chat/completions", json=CHAT) as response,
        ):
            assert response.status_code == 200
            for piece in response.iter_raw():
                times.append(time.monotonic())
                pieces.append(piece)

    await anyio.to_thread.run_sync(read)
    assert pieces == chunks(cassette)
    assert_same_pace([c.t for c in cassette.chunks()], times)

    pieces.clear()
    times.clear()
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://replay") as client,
        client.stream("POST", "/v1/chat/completions", json=CHAT) as response,
    ):
        async for piece in response.aiter_raw():
            times.append(time.monotonic())
            pieces.append(piece)
    assert pieces == chunks(cassette)
    assert_same_pace([c.t for c in cassette.chunks()], times)
    assert b"".join(pieces) == original


async def test_asgi_app_serves_a_directory_at_pace(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    async with deadline(30) as tg:
        upstream, _ = await start_upstream(tg, script_upstream(SCRIPT))
        original, cassette = await record(tg, upstream, first, 1)
        with running(ReplayApp(first)) as server:
            replayed, again = await record(tg, server.url, second, 1)
            async with httpx.AsyncClient() as client:
                missing = await client.post(server.url + "/v1/chat/completions", json={"x": 1})
    assert replayed == original
    assert chunks(again) == chunks(cassette)
    assert_same_pace([c.t for c in cassette.chunks()], [c.t for c in again.chunks()])
    assert missing.status_code == 404
    [closest] = missing.json()["error"]["closest"]
    assert closest["file"] == cassette.name
    assert closest["differs"] == ["body"]


async def test_unmatched_request_gets_404_naming_the_closest_cassettes(tmp_path: Path) -> None:
    async with deadline(20) as tg:
        upstream, _ = await start_upstream(tg, script_upstream(SCRIPT[:1]))
        _, cassette = await record(tg, upstream, tmp_path, 1)
        config = ReplayConfig(source=str(tmp_path), listen_port=0)
        host, port = await tg.start(serve_replay, config)
        base = f"http://{host}:{port}"
        async with httpx.AsyncClient() as client:
            other_body = await client.post(base + "/v1/chat/completions", json={**CHAT, "n": 2})
            other_path = await client.post(base + "/v1/completions", json=CHAT)
            # JSON compared as data: key order and spacing do not matter
            reordered = json.dumps(dict(reversed(list(CHAT.items()))), indent=2)
            same = await client.post(base + "/v1/chat/completions", content=reordered)
        wide = ReplayConfig(source=str(tmp_path), listen_port=0, match=("method", "path"))
        host, port = await tg.start(serve_replay, wide)
        async with httpx.AsyncClient() as client:
            any_body = await client.post(f"http://{host}:{port}/v1/chat/completions", json={})
    assert other_body.status_code == other_path.status_code == 404
    assert other_body.json()["error"]["closest"][0]["differs"] == ["body"]
    assert other_path.json()["error"]["closest"][0]["differs"] == ["path"]
    assert other_path.json()["error"]["closest"][0]["file"] == cassette.name
    assert same.status_code == 200
    assert same.content == SCRIPT[0][1]
    assert any_body.status_code == 200


CUT_SCRIPT = SCRIPT[:3]  # ends inside an event, no last chunk


async def test_openai_sdk_streams_a_replay_and_a_cut_replay_raises_as_a_live_cut(
    tmp_path: Path,
) -> None:
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    live_error: BaseException | None = None
    async with deadline(30) as tg:
        upstream, _ = await start_upstream(tg, script_upstream(SCRIPT))
        await record(tg, upstream, whole, 1)
        cut_upstream, _ = await start_upstream(tg, script_upstream(CUT_SCRIPT, cut=True))
        proxy = await start_proxy(tg, cut_upstream, record=str(cut))
        sdk = openai.AsyncOpenAI(base_url=proxy + "/v1", api_key="sk-test", max_retries=0)
        try:
            stream = await sdk.chat.completions.create(**CHAT)  # type: ignore[call-overload]
            async for _ in stream:
                pass
        except Exception as exc:
            live_error = exc
        await sdk.close()
        [cut_path] = await wait_cassettes(cut, 1)
        host, port = await tg.start(serve_replay, ReplayConfig(source=str(whole), listen_port=0))
        replay_sdk = openai.AsyncOpenAI(
            base_url=f"http://{host}:{port}/v1", api_key="sk-test", max_retries=0
        )
        stream = await replay_sdk.chat.completions.create(**CHAT)  # type: ignore[call-overload]
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        await replay_sdk.close()
        cut_host, cut_port = await tg.start(
            serve_replay, ReplayConfig(source=str(cut), listen_port=0)
        )
        replay_error: BaseException | None = None
        cut_sdk = openai.AsyncOpenAI(
            base_url=f"http://{cut_host}:{cut_port}/v1", api_key="sk-test", max_retries=0
        )
        try:
            stream = await cut_sdk.chat.completions.create(**CHAT)  # type: ignore[call-overload]
            async for _ in stream:
                pass
        except Exception as exc:
            replay_error = exc
        await cut_sdk.close()
    assert text == "Hello你好 world!"
    assert load(cut_path).read_end().outcome == "upstream_cut"
    assert live_error is not None
    assert type(replay_error) is type(live_error)
    # the transport too, sync
    client = openai.OpenAI(
        base_url="http://replay/v1",
        api_key="sk-test",
        max_retries=0,
        http_client=httpx.Client(transport=ReplayTransport(load(cut_path), speed=None)),
    )
    with client, pytest.raises(type(live_error)):
        for _ in client.chat.completions.create(**CHAT):  # type: ignore[call-overload]
            pass


async def test_cut_after_ends_the_connection_after_n_events(tmp_path: Path) -> None:
    async with deadline(20) as tg:
        upstream, _ = await start_upstream(tg, script_upstream(SCRIPT))
        await record(tg, upstream, tmp_path, 1)
        config = ReplayConfig(source=str(tmp_path), listen_port=0, pace=Pace(cut_after=2))
        host, port = await tg.start(serve_replay, config)
        received = b""
        async with httpx.AsyncClient() as client:
            with contextlib.suppress(httpx.RemoteProtocolError):
                async with client.stream(
                    "POST", f"http://{host}:{port}/v1/chat/completions", json=CHAT
                ) as response:
                    async for piece in response.aiter_raw():
                        received += piece
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post(f"http://{host}:{port}/v1/chat/completions", json=CHAT)
    assert len(list(iter_events([received]))) == 2
    assert received == b"".join(data for _, data in SCRIPT)[: len(received)]
    assert received.endswith(b"\r\n\r")  # the CR that dispatched event 2 ends its chunk


SECRETS = {
    "authorization": "Bearer ct-client-token-5f2a9c",
    "proxy-authorization": "Basic cHJveHk6c2VjcmV0LXByb3h5",
    "cookie": "session=sess-cookie-8d1e44",
    "x-api-key": "sk-ant-api03-AbCdEf123456",
    "api-key": "azure-key-77c0ffee",
    "x-internal-token": "internal-9a9a9a9a",
}


async def test_no_secret_reaches_the_recording_directory(tmp_path: Path) -> None:
    async def upstream_script(stream, seen):  # type: ignore[no-untyped-def]
        await stream.send(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"set-cookie: upstream-session=setcookie-31337\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        await stream.send(chunk(b"data: ok\n\n") + LAST_CHUNK)

    async with deadline(20) as tg:
        upstream, seen = await start_upstream(tg, upstream_script)
        proxy = await start_proxy(
            tg,
            upstream,
            record=str(tmp_path),
            record_redact=("X-Internal-Token",),
            api_keys=("sk-proj-upstream-Zz9Yy8Xx7",),
            client_tokens=("ct-client-token-5f2a9c",),
            admin_tokens=("adm-admin-token-4b4b",),
        )
        async with httpx.AsyncClient() as client:
            response = await client.post(
                proxy + "/v1/chat/completions?token=adm-admin-token-4b4b",
                headers=SECRETS,
                content=b'{"note": "adm-admin-token-4b4b"}',
            )
        await wait_cassettes(tmp_path, 1)
    assert response.status_code == 200
    assert seen.header(b"authorization") == b"Bearer sk-proj-upstream-Zz9Yy8Xx7"
    secrets = [
        "ct-client-token-5f2a9c",
        "cHJveHk6c2VjcmV0LXByb3h5",
        "sess-cookie-8d1e44",
        "sk-ant-api03-AbCdEf123456",
        "azure-key-77c0ffee",
        "internal-9a9a9a9a",
        "setcookie-31337",
        "sk-proj-upstream-Zz9Yy8Xx7",
        "adm-admin-token-4b4b",
    ]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]  # noqa: ASYNC240
    assert files
    for path in files:
        data = path.read_bytes()
        assert [s for s in secrets if s.encode() in data] == []
    cassette = load(files[0])
    headers = dict(cassette.request.headers)
    assert headers["authorization"] == headers["x-internal-token"] == "[redacted]"
    assert cassette.response.header("set-cookie") == "[redacted]"


FAST = [(0.001, b"data: %d\n\n" % i) for i in range(40)]


async def stream_with_disk_trouble(tmp_path: Path) -> tuple[bytes, float, bytes]:
    """A fast stream through a recording proxy: what the client got, how long, the metrics."""
    async with deadline(20) as tg:
        upstream, _ = await start_upstream(tg, script_upstream(FAST))
        proxy = await start_proxy(tg, upstream, record=str(tmp_path))
        async with httpx.AsyncClient(timeout=10) as client:
            started = time.monotonic()
            response = await client.post(proxy + "/v1/chat/completions", json=CHAT)
            took = time.monotonic() - started
            await anyio.sleep(1.0)  # the writer works through what was queued (4 x 0.2 s)
            with anyio.fail_after(10):  # and gives the partial file up
                while list(tmp_path.iterdir()):  # noqa: ASYNC240
                    await anyio.sleep(0.05)
            metrics = (await client.get(proxy + "/_ssekit/metrics")).content
    return response.content, took, metrics


def dropped_notices(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [
        r.ssekit  # type: ignore[attr-defined]
        for r in caplog.records
        if getattr(r, "ssekit", {}).get("notice") == "record_dropped"
    ]


async def test_a_slow_disk_drops_the_recording_never_the_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from ssekit.proxy import _record

    real_write = _record.Take.write

    def slow_write(self: _record.Take, line: bytes) -> None:
        time.sleep(0.2)
        real_write(self, line)

    monkeypatch.setattr(_record, "QUEUE_SIZE", 4)
    monkeypatch.setattr(_record.Take, "write", slow_write)
    got, took, metrics = await stream_with_disk_trouble(tmp_path)
    assert got == b"".join(data for _, data in FAST)
    assert took < 2.0  # the disk would have taken 40 x 0.2 s
    assert b"ssekit_record_dropped_total 1\n" in metrics
    assert b"ssekit_record_cassettes_total 0\n" in metrics
    [notice] = dropped_notices(caplog)
    assert str(notice["cassette"]).endswith(".jsonl")


async def test_a_full_disk_drops_the_recording_never_the_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from ssekit.proxy import _record

    def full(self: _record.Take, line: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_record.Take, "write", full)
    got, _, metrics = await stream_with_disk_trouble(tmp_path)
    assert got == b"".join(data for _, data in FAST)
    assert b"ssekit_record_dropped_total 1\n" in metrics
    assert len(dropped_notices(caplog)) == 1


SHIPPED = Path(__file__).resolve().parent.parent / "benchmarks" / "cassettes"


async def test_ssekit_client_and_ssekit_httpx_read_a_replay_as_a_live_stream() -> None:
    from ssekit.client import RetryPolicy, connect
    from ssekit.httpx import aconnect_sse

    cassette = load(SHIPPED / "mock-events-cut.jsonl")
    recorded = list(iter_events(chunks(cassette)))
    assert len(recorded) == 13  # the open event, then 12 before the cut
    seen: list[Event] = []
    read: list[Event] = []
    async with deadline(20) as tg:
        config = ReplayConfig(source=cassette.path, listen_port=0, pace=Pace(speed=4))
        host, port = await tg.start(serve_replay, config)
        url = f"http://{host}:{port}{cassette.request.target}"
        async with connect(url, policy=RetryPolicy(max_retries=2)) as events:
            async for event in events:  # after the cut it reconnects: the replay answers again
                seen.append(event)
                if len(seen) == 15:
                    break
        transport = ReplayTransport(cassette, speed=None)
        async with (
            httpx.AsyncClient(transport=transport) as client,
            aconnect_sse(client, "GET", "http://replay" + cassette.request.target) as source,
        ):
            with pytest.raises(httpx.RemoteProtocolError):  # the recording was cut
                async for event in source.aiter_sse():
                    read.append(event)  # noqa: PERF401 -- kept as they come, before the raise
    assert seen[:13] == recorded
    assert seen[13:] == recorded[:2]
    assert read == recorded


async def test_a_plain_json_answer_replays_with_its_length(tmp_path: Path) -> None:
    plain = {**CHAT, "stream": False}
    async with deadline(20) as tg:
        mock = await start_mock(tg, tokens=4, delay=0)
        proxy = await start_proxy(tg, mock, record=str(tmp_path))
        async with httpx.AsyncClient() as client:
            live = await client.post(proxy + "/v1/chat/completions", json=plain)
        await wait_cassettes(tmp_path, 1)
        host, port = await tg.start(serve_replay, ReplayConfig(source=str(tmp_path), listen_port=0))
        async with httpx.AsyncClient() as client:
            replayed = await client.post(f"http://{host}:{port}/v1/chat/completions", json=plain)
    transport = ReplayTransport(tmp_path)
    with httpx.Client(transport=transport) as client:
        via_transport = client.post("http://replay/v1/chat/completions", json=plain)
    for response in (replayed, via_transport):
        assert response.status_code == 200
        assert response.content == live.content
        assert response.headers["content-length"] == str(len(live.content))
        assert "transfer-encoding" not in response.headers


async def test_include_usage_records_the_request_the_client_sent_and_replays_to_it(
    tmp_path: Path,
) -> None:
    """--include-usage rewrites the body for the upstream; the cassette keeps the client's
    request (body and Content-Length agree), so the same request matches it on replay."""
    async with deadline(20) as tg:
        mock = await start_mock(tg, tokens=3, delay=0)
        live, cassette = await record(tg, mock, tmp_path, 1, include_usage=True)
        request = cassette.request
        assert json.loads(request.body) == CHAT  # no stream_options: the client's body
        lengths = [v for n, v in request.headers if n.lower() == "content-length"]
        assert lengths == [str(len(request.body))]
        host, port = await tg.start(serve_replay, ReplayConfig(source=str(tmp_path), listen_port=0))
        async with httpx.AsyncClient() as client:
            replayed = await client.post(f"http://{host}:{port}/v1/chat/completions", json=CHAT)
    assert replayed.status_code == 200
    assert replayed.content == live
    usage = [json.loads(e.data)["usage"] for e in iter_events([live]) if e.data != "[DONE]"]
    assert usage[-1]["completion_tokens"] == 3  # the upstream got include_usage
