"""``ssekit proxy --workers N``: several processes on one port, as an operator runs them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from _procs import Stderr, finish, listening, spawn

from ssekit._http import _stream

CHAT = {"stream": True, "messages": [{"role": "user", "content": "hi"}]}


@contextlib.contextmanager
def proxy_with_workers(count: int, *extra: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    mock = spawn("mock-upstream", "--listen", "127.0.0.1:0", "--delay", "0.05")
    try:
        upstream = listening(mock, "mock")
        proc = spawn(
            "proxy", "--upstream", upstream, "--listen", "127.0.0.1:0",
            "--workers", str(count), *extra,
        )  # fmt: skip
        try:
            yield proc, listening(proc, "proxy")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            finish(proc)
    finally:
        mock.kill()
        finish(mock)


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.add(int(entry.name))
    return found


def established_on(port: int) -> set[int]:
    """Socket inodes of established TCP connections whose local port is ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    inodes.add(int(fields[9]))
    return inodes


def sockets_of(pid: int) -> set[int]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def wait_for(check: object, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_two_workers_serve_at_once_and_metrics_sum_over_both() -> None:
    with proxy_with_workers(2) as (proc, base):
        port = int(base.rsplit(":", 1)[1])
        assert wait_for(lambda: len(children(proc.pid)) == 2)
        workers = children(proc.pid)
        owners: dict[int, int] = {}

        def stream() -> None:
            with httpx.Client(timeout=20) as client:
                with client.stream("POST", base + "/v1/chat/completions", json=CHAT) as r:
                    for _ in r.iter_bytes():
                        pass

        threads = [threading.Thread(target=stream) for _ in range(16)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)  # the streams run ~2 s each (40 tokens, 50 ms apart)
        live = established_on(port)
        for pid in workers:
            owners[pid] = len(sockets_of(pid) & live)
        for thread in threads:
            thread.join(timeout=20)
        # SO_REUSEPORT spreads connections: both workers hold some at the same time.
        assert all(count > 0 for count in owners.values()), owners
        assert sum(owners.values()) == 16, owners
        time.sleep(1.5)  # each worker leaves its counters every second
        with httpx.Client(timeout=10) as client:
            text = client.get(base + "/_ssekit/metrics").text
        assert 'ssekit_streams_total{outcome="complete"} 16' in text, text


def test_sigterm_drains_every_worker() -> None:
    with proxy_with_workers(2, "--drain-timeout", "10") as (proc, base):
        bodies: list[bytes] = []
        first_bytes = threading.Barrier(5, timeout=20)

        def stream() -> None:
            body = b""
            with httpx.Client(timeout=20) as client:
                with client.stream("POST", base + "/v1/chat/completions", json=CHAT) as r:
                    for data in r.iter_bytes():
                        if not body:
                            first_bytes.wait()
                        body += data
            bodies.append(body)

        threads = [threading.Thread(target=stream) for _ in range(4)]
        for thread in threads:
            thread.start()
        first_bytes.wait()  # every stream is flowing, spread over the workers
        proc.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=20)
        assert proc.wait(timeout=20) == 0
        assert len(bodies) == 4
        assert all(body.endswith(b"data: [DONE]\n\n") for body in bodies)
        assert children(proc.pid) == set()


def test_a_killed_worker_is_replaced_and_serving_goes_on() -> None:
    with proxy_with_workers(2) as (proc, base):
        Stderr(proc)  # drained, so the pipe never fills (its lines are free text)
        assert wait_for(lambda: len(children(proc.pid)) == 2)
        victim = min(children(proc.pid))
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: len(children(proc.pid) - {victim}) == 2)
        assert victim not in children(proc.pid)
        with httpx.Client(timeout=20) as client:
            for _ in range(4):
                assert client.get(base + "/_ssekit/health").json() == {"status": "ok"}


@pytest.mark.anyio
async def test_accepted_sockets_have_nagle_off() -> None:
    # Every worker accepts through this path; a pre-bound socket must not bring Nagle back.
    with socket.create_server(("127.0.0.1", 0)) as listening_socket:
        listening_socket.setblocking(False)
        port = listening_socket.getsockname()[1]
        async with await anyio.connect_tcp("127.0.0.1", port):
            with anyio.fail_after(5):
                stream = await _stream.accept(listening_socket)
            sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            await stream.aclose()


def test_workers_option_is_explained_and_checked() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "ssekit", "proxy", "--help"], capture_output=True, text=True
    ).stdout
    assert "--workers N|auto" in help_text
    bad = subprocess.run(
        [sys.executable, "-m", "ssekit", "proxy", "--workers", "0"], capture_output=True, text=True
    )
    assert bad.returncode == 2  # a configuration error
    assert bad.stderr.strip()  # the message (free text, for a person)


# -- signals, a supervisor gone, stale counts (issue 20, section 5) ----------------------


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not reaped, is not running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@contextlib.contextmanager
def supervised(
    tmp: Path, count: int, *extra: str, delay: str = "0.05"
) -> Iterator[tuple[subprocess.Popen[str], str, Stderr]]:
    """``ssekit proxy --workers count`` with its own TMPDIR (``tmp``) and JSON logs; every
    process it started (workers, possibly orphaned) is gone when the block is left."""
    mock = spawn("mock-upstream", "--listen", "127.0.0.1:0", "--delay", delay)
    started: set[int] = set()
    try:
        upstream = listening(mock, "mock")
        proc = subprocess.Popen(
            [sys.executable, "-m", "ssekit", "proxy", "--upstream", upstream,
             "--listen", "127.0.0.1:0", "--workers", str(count), "--log-format", "json", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "TMPDIR": str(tmp)},
        )  # fmt: skip
        try:
            base = listening(proc, "proxy")
            stderr = Stderr(proc)
            assert wait_for(lambda: len(children(proc.pid)) == count)
            started |= children(proc.pid)
            yield proc, base, stderr
        finally:
            started |= children(proc.pid)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            for pid in started:  # orphans this test made: never left running (they hold
                if alive(pid):  # the stderr pipe, which finish() closes)
                    os.kill(pid, signal.SIGKILL)
            finish(proc)
    finally:
        mock.kill()
        finish(mock)


def notices(stderr: Stderr) -> list[dict[str, object]]:
    """The operator notices among the JSON lines on stderr (not access-log lines)."""
    found = []
    for line in stderr.text.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and "notice" in record:
                found.append(record)
    return found


def active_requests(base: str) -> int:
    with httpx.Client(timeout=10) as client:
        text = client.get(base + "/_ssekit/metrics").text
    [value] = [line.split()[1] for line in text.splitlines() if line.startswith("ssekit_active_")]
    return int(value)


def test_sighup_is_ignored_and_the_workers_serve_on_then_sigterm_drains(tmp_path: Path) -> None:
    with supervised(tmp_path, 2) as (proc, base, stderr):
        workers = children(proc.pid)
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: any(n["notice"] == "sighup_ignored" for n in notices(stderr)), 5)
        assert proc.poll() is None
        assert children(proc.pid) == workers  # the same workers: nothing restarted
        with httpx.Client(timeout=10) as client:
            assert client.get(base + "/_ssekit/health").json() == {"status": "ok"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not any(alive(pid) for pid in workers)
    [draining] = [n for n in notices(stderr) if n["notice"] == "draining"]
    assert (draining["workers"], draining["drain_timeout_s"]) == (2, 10.0)
    assert list(tmp_path.iterdir()) == []  # the metrics directory went with the supervisor


def test_workers_drain_and_exit_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    with supervised(tmp_path, 2) as (proc, _, stderr):
        workers = children(proc.pid)
        proc.kill()
        proc.wait(timeout=10)
        assert wait_for(lambda: not any(alive(pid) for pid in workers), 15)
        gone = [n for n in notices(stderr) if n["notice"] == "supervisor_gone"]
        assert sorted(n["pid"] for n in gone) == sorted(workers)
        assert list(tmp_path.iterdir()) == []  # the last worker out removed the metrics


def test_a_killed_workers_requests_leave_the_active_gauge_and_its_counts_stay(
    tmp_path: Path,
) -> None:
    with supervised(tmp_path, 2, delay="0.1") as (proc, base, _):
        port = int(base.rsplit(":", 1)[1])
        for _ in range(10):  # new connections: spread over both workers
            with httpx.Client(timeout=10) as client:
                assert client.get(base + "/nope").status_code == 404  # the mock's
        ended = threading.Barrier(7, timeout=30)

        def stream() -> None:  # 40 tokens 0.1 s apart: about 4 s
            with contextlib.suppress(httpx.HTTPError):
                with httpx.Client(timeout=20) as client:
                    with client.stream("POST", base + "/v1/chat/completions", json=CHAT) as r:
                        for _ in r.iter_bytes():
                            pass
            ended.wait()

        threads = [threading.Thread(target=stream) for _ in range(6)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)  # every worker left its counters with its streams in flight
        live = established_on(port)
        holding = {pid: len(sockets_of(pid) & live) for pid in children(proc.pid)}
        victim = max(holding, key=lambda pid: holding[pid])
        assert holding[victim] > 0, holding
        os.kill(victim, signal.SIGKILL)
        ended.wait()  # every stream over: cut on the victim, complete elsewhere
        assert wait_for(lambda: len(children(proc.pid) - {victim}) == 2)
        time.sleep(1.5)  # every worker left its counters again
        # Only the scrape itself is in flight, whichever worker answers it.
        assert [active_requests(base) for _ in range(6)] == [1] * 6
        with httpx.Client(timeout=10) as client:
            text = client.get(base + "/_ssekit/metrics").text
        # The victim's earlier answers stay counted (nothing else answers 404).
        assert 'ssekit_requests_total{status="404"} 10' in text.splitlines(), text


def marked(tmp: Path) -> set[int]:
    """Processes whose environment has ``TMPDIR=tmp``: those this test started, and their
    children (orphaned or not)."""
    mark = f"TMPDIR={tmp}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if mark in (entry / "environ").read_bytes().split(b"\0") and alive(int(entry.name)):
                    found.add(int(entry.name))
    return found


def test_sigterm_while_the_workers_start_drains_them(tmp_path: Path) -> None:
    # The supervisor takes SIGTERM from before it forks: none comes too early to drain.
    proc = subprocess.Popen(
        [sys.executable, "-m", "ssekit", "proxy", "--upstream", "http://127.0.0.1:9",
         "--listen", "127.0.0.1:0", "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while len(children(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)  # the workers forked, not yet serving
        assert proc.wait(timeout=20) == 0
        assert wait_for(lambda: not marked(tmp_path), 10)
    finally:
        for pid in marked(tmp_path):  # orphans this test made
            os.kill(pid, signal.SIGKILL)
        finish(proc)
    assert list(tmp_path.iterdir()) == []


def test_sigterm_to_the_supervisor_announces_the_drain(tmp_path: Path) -> None:
    with supervised(tmp_path, 2, "--drain-timeout", "7") as (proc, _, stderr):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    [draining] = [n for n in notices(stderr) if n["notice"] == "draining"]
    assert (draining["workers"], draining["drain_timeout_s"]) == (2, 7.0)
