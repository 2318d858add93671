"""Server shutdown ends open ssekit streams cleanly, under a real ``uvicorn`` process.

Plain ``uvicorn app:app`` (no ``--timeout-graceful-shutdown``) on 127.0.0.1, port 0; the app
is ``tests/_shutdown_app.py``. Clients are a raw socket (to see the chunked framing itself)
and ssekit.httpx (which raises if the body is cut). uvicorn logs JSON lines (its records:
logger, level, exception), which the tests read instead of its log text.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _shutdown_app import LOG_CONFIG
from _uvicorn import wait_for

from ssekit.httpx import connect_sse

pytestmark = pytest.mark.timeout(60)

TESTS = Path(__file__).parent


class Uvicorn:
    """A ``python -m uvicorn`` child serving ``_shutdown_app:app``; its stderr collected."""

    def __init__(self, log: Path) -> None:
        env = {**os.environ, "SSEKIT_TEST_LOG": str(log)}
        log_config = log.with_name("uvicorn-log.json")
        log_config.write_text(json.dumps(LOG_CONFIG))
        command = [sys.executable, "-m", "uvicorn", "_shutdown_app:app", "--app-dir", str(TESTS)]
        command += ["--log-config", str(log_config)]
        self.proc = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", "0", "--log-level", "info"],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.log = log
        self.stderr = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_for(lambda: "Uvicorn running on" in self.stderr, 20, "uvicorn did not start")
        match = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", self.stderr)
        assert match, self.stderr
        self.port = int(match.group(1))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with contextlib.suppress(ValueError, OSError):
            for line in self.proc.stderr:
                self.stderr += line

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def records(self) -> list[dict[str, Any]]:
        """uvicorn's log records; every stderr line is one (nothing was written around
        logging, such as a bare traceback)."""
        return [json.loads(line) for line in self.stderr.splitlines()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Uvicorn]:
    running = Uvicorn(tmp_path / "producers.log")
    try:
        yield running
    finally:
        running.stop()


def raw_get(port: int, target: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


def read_to_close(sock: socket.socket, into: list[bytes]) -> None:
    """Everything the server sends until it closes the connection (bounded by the timeout)."""
    with sock, contextlib.suppress(OSError):
        while data := sock.recv(65536):
            into.append(data)


def test_sigterm_ends_open_and_starting_streams_cleanly_and_uvicorn_exits(
    server: Uvicorn,
) -> None:
    raw: list[bytes] = []
    late: list[bytes] = []
    read: list[object] = []

    def with_httpx() -> None:
        try:
            with httpx.Client(timeout=10) as client:
                url = f"http://127.0.0.1:{server.port}/ticks?name=b"
                with connect_sse(client, "GET", url) as source:
                    read.append([event.id for event in source.iter_sse()])
        except Exception as exc:  # the test checks there was none
            read.append(exc)

    readers = [
        threading.Thread(target=read_to_close, args=(raw_get(server.port, "/ticks?name=a"), raw)),
        threading.Thread(target=with_httpx),
    ]
    for reader in readers:
        reader.start()
    wait_for(lambda: len(server.lines()) == 2, 10, "the two streams never started")
    time.sleep(0.2)  # both mid-stream
    # A third request whose handler is still working when the signal comes.
    late_reader = threading.Thread(
        target=read_to_close, args=(raw_get(server.port, "/late?name=c"), late)
    )
    late_reader.start()
    time.sleep(0.2)
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    status = server.proc.wait(10)
    took = time.monotonic() - signalled
    for reader in [*readers, late_reader]:
        reader.join(5)

    # uvicorn re-raises the signal only after its shutdown completed, cleanly
    # (uvicorn.Server.capture_signals), so -SIGTERM is its normal exit.
    assert status == -signal.SIGTERM
    assert took < 3  # uvicorn alone would wait for ever
    errors = [r for r in server.records() if r["level"] >= logging.ERROR or r["exc_type"]]
    assert errors == []
    wire = b"".join(raw)
    assert b"transfer-encoding: chunked" in wire.lower()
    assert wire.endswith(b"\r\n0\r\n\r\n")  # the last chunk: a complete body
    assert wire.count(b"data: tick") >= 10
    assert len(read) == 1
    assert isinstance(read[0], list)  # no httpx error: the body was not cut
    assert len(read[0]) >= 10
    assert read[0] == [str(n) for n in range(len(read[0]))]
    late_wire = b"".join(late)
    assert late_wire.startswith(b"HTTP/1.1 200 ")
    assert late_wire.endswith(b"\r\n\r\n0\r\n\r\n")  # the head, then the end: no events
    assert b"data:" not in late_wire
    # a and b were closed (their finally ran); c, starting after the signal, was closed
    # before its first step, so its body never ran.
    lines = server.lines()
    assert sorted(lines[:2]) == ["start a", "start b"]
    assert sorted(lines[2:]) == ["finally a", "finally b"]


def test_ctrl_c_twice_still_force_quits_uvicorn(server: Uvicorn) -> None:
    # A plain (non-ssekit) response that never ends keeps uvicorn waiting after the
    # first Ctrl-C; uvicorn's own handler makes the second one force the exit.
    stream: list[bytes] = []
    plain: list[bytes] = []
    readers = [
        threading.Thread(
            target=read_to_close, args=(raw_get(server.port, "/ticks?name=a"), stream)
        ),
        threading.Thread(target=read_to_close, args=(raw_get(server.port, "/plain"), plain)),
    ]
    for reader in readers:
        reader.start()
    wait_for(lambda: server.lines() == ["start a"], 10, "the stream never started")
    time.sleep(0.2)
    server.proc.send_signal(signal.SIGINT)
    wait_for(lambda: "finally a" in server.lines(), 3, "the first Ctrl-C did not end the stream")
    readers[0].join(3)
    time.sleep(0.5)
    assert server.proc.poll() is None  # still waiting for /plain, as uvicorn does
    server.proc.send_signal(signal.SIGINT)
    status = server.proc.wait(5)
    for reader in readers:
        reader.join(5)
    assert status == 0  # uvicorn turns the re-raised SIGINT into a normal exit
    assert b"".join(stream).endswith(b"\r\n0\r\n\r\n")
    assert not b"".join(plain).endswith(b"\r\n0\r\n\r\n")  # force-quit: that one was cut
    # uvicorn logs the torn-down /plain task; nothing of ssekit's is in any traceback.
    files = [name for record in server.records() for name in record["exc_files"]]
    assert [name for name in files if Path(name).parts[-2:] == ("ssekit", "asgi.py")] == []


def test_sigterm_ends_a_stream_whose_sync_producer_blocks_and_uvicorn_exits(
    server: Uvicorn,
) -> None:
    # Issue 20, 6: the producer's thread cannot be stopped, but nothing waits for it.
    sock = raw_get(server.port, "/blocked?name=s")
    wire = [sock.recv(65536)]
    deadline = time.monotonic() + 10
    while b"data: first s" not in b"".join(wire) and time.monotonic() < deadline:
        wire.append(sock.recv(65536))
    reader = threading.Thread(target=read_to_close, args=(sock, wire))
    reader.start()
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    status = server.proc.wait(10)
    took = time.monotonic() - signalled
    reader.join(5)
    assert status == -signal.SIGTERM  # uvicorn's clean exit (see the first test)
    assert took < 3
    assert b"".join(wire).endswith(b"\r\n0\r\n\r\n")  # the body ended: a complete response
    errors = [r for r in server.records() if r["level"] >= logging.ERROR or r["exc_type"]]
    assert errors == []
    assert server.lines()[:1] == ["start s"]
