"""Record and replay as an operator does: ssekit proxy --record, mock-upstream --replay,
cassette show, as child processes; bytes, HTTP chunk boundaries and timing compared."""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from _procs import Stderr, finish, listening, spawn

from ssekit.cassette import load

CHAT = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def read_chunks(url: str, body: bytes) -> tuple[list[tuple[float, bytes]], bool]:
    """POST /v1/chat/completions over a raw socket: each HTTP chunk of the answer with
    when it was complete, and whether the body ended with its last chunk."""
    parts = urlsplit(url)
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
    )
    received: list[tuple[float, bytes]] = []
    buffer = b""
    head_done = False
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(request)
        while True:
            data = sock.recv(65536)
            now = time.monotonic()
            if not data:
                return received, False
            buffer += data
            if not head_done:
                if b"\r\n\r\n" not in buffer:
                    continue
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                assert b"transfer-encoding: chunked" in head.lower()
                head_done = True
            while b"\r\n" in buffer:
                size_line, _, rest = buffer.partition(b"\r\n")
                size = int(size_line, 16)
                if len(rest) < size + 2:
                    break
                if size == 0:
                    return received, True
                received.append((now, rest[:size]))
                buffer = rest[size + 2 :]


def wait_file(directory: Path, seconds: float = 10) -> Path:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = sorted(directory.glob("*.jsonl"))
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"no cassette in {directory}")


def test_record_then_replay_through_the_command_line(tmp_path: Path) -> None:
    procs: list[subprocess.Popen[str]] = []
    try:
        mock = spawn("mock-upstream", "--listen", "127.0.0.1:0", "--tokens", "6", "--delay", "0.15")
        procs.append(mock)
        mock_url = listening(mock, "mock")
        proxy = spawn(
            "proxy", "--upstream", mock_url, "--listen", "127.0.0.1:0", "--record", str(tmp_path)
        )
        procs.append(proxy)
        Stderr(proxy)
        proxy_url = listening(proxy, "proxy")
        live = httpx.post(proxy_url + "/v1/chat/completions", json=CHAT, timeout=10)
        path = wait_file(tmp_path)
        cassette = load(path)
        replay = spawn("mock-upstream", "--listen", "127.0.0.1:0", "--replay", str(tmp_path))
        procs.append(replay)
        replay_url = listening(replay, "replaying")
        body = json.dumps(CHAT).encode()
        chunks, clean = read_chunks(replay_url, body)
        fast = spawn(
            "mock-upstream", "--listen", "127.0.0.1:0", "--replay", str(path),
            "--speed", "max", "--rechunk", "1",
        )  # fmt: skip
        procs.append(fast)
        ones, ones_clean = read_chunks(listening(fast, "replaying"), body)
        shown = subprocess.run(
            [sys.executable, "-m", "ssekit", "cassette", "show", str(path), "--json"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            finish(proc)
    recorded = list(cassette.chunks())
    assert clean
    assert b"".join(data for _, data in chunks) == live.content
    assert [data for _, data in chunks] == [c.data for c in recorded]
    pairs = zip(itertools.pairwise(chunks), itertools.pairwise(recorded), strict=True)
    for ((then, _), (now, _)), (was, after) in pairs:
        if after.t - was.t >= 0.05:
            assert abs((now - then) - (after.t - was.t)) < 0.04
    assert ones_clean
    assert all(len(data) == 1 for _, data in ones)
    assert b"".join(data for _, data in ones) == live.content
    recorded_span = recorded[-1].t - recorded[0].t  # about 6 x 0.15 s
    assert ones[-1][0] - ones[0][0] < recorded_span / 2  # --speed max: no waiting
    assert shown.returncode == 0
    view = json.loads(shown.stdout)
    assert len(view["events"]) == 6 + 3  # role, 6 tokens, stop, [DONE]
    assert view["end"]["outcome"] == "complete"


def test_replay_of_a_missing_path_is_a_configuration_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ssekit", "mock-upstream", "--replay", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stdout == ""


def test_replay_of_a_file_that_is_not_a_cassette_is_a_configuration_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"bad": 1}\n')
    result = subprocess.run(
        [sys.executable, "-m", "ssekit", "mock-upstream", "--replay", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1  # one line, no traceback


def test_record_into_a_directory_that_cannot_be_made_is_a_configuration_error(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "ssekit", "proxy", "--listen", "127.0.0.1:0",
         "--upstream", "http://127.0.0.1:9", "--record", str(blocker / "cassettes")],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stdout == ""  # no banner: it never started
    assert len(result.stderr.splitlines()) == 1


def test_record_counts_are_summed_over_workers(tmp_path: Path) -> None:
    """Each worker records on its own; the metrics, from whichever worker answers, count
    every worker's cassettes (they are left with the other counters every second)."""
    from prometheus_client.parser import text_string_to_metric_families
    from test_usage_cli import proxy, wait_for

    def pids() -> set[str]:  # cassette names hold the recording worker's pid
        return {path.name.split("-")[1] for path in tmp_path.glob("*.jsonl")}

    with proxy("--workers", "2", "--record", str(tmp_path)) as (_, base):
        with httpx.Client(timeout=20) as client:
            sent = 0
            while sent < 40 and (sent < 4 or len(pids()) < 2):  # until both workers recorded
                with httpx.Client(timeout=20) as one:  # a new connection each time
                    assert one.post(base + "/v1/chat/completions", json=CHAT).status_code == 200
                sent += 1
                assert wait_for(lambda n=sent: len(list(tmp_path.glob("*.jsonl"))) == n)
            assert len(pids()) == 2
            time.sleep(1.5)  # each worker leaves its counters every second
            scrapes = [client.get(base + "/_ssekit/metrics").text for _ in range(4)]
    for text in scrapes:
        found = {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name.startswith("ssekit_record_")
        }
        assert found == {"ssekit_record_cassettes_total": sent, "ssekit_record_dropped_total": 0}
