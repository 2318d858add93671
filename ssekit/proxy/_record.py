"""``ssekit proxy --record DIR``: every exchange with a response head becomes a cassette.

The exchange only hands what it forwards to a bounded queue (``put_nowait``: it
never waits); one writer thread turns it into cassette lines (see
:mod:`ssekit.cassette`) in ``DIR/<name>.jsonl.partial``, renamed to ``.jsonl``
once the end line is written. A full queue (a slow disk) or a failed write (a
full one) drops that recording, logged and counted, never the stream: the
partial file is removed and the forwarded bytes never changed or waited.

Secrets never reach the file: the values of :data:`SECRET_HEADERS` and of the
headers named by ``--record-redact`` become ``[redacted]``, and so does every
occurrence of the proxy's own upstream keys and client and admin tokens in a
header, the target or the request body.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Final

from ..cassette import REDACTED, chunk_line, end_line, header_line
from ._stats import report, utc_time

__all__ = ("SECRET_HEADERS", "Recorder", "Take")

#: Header fields whose values never reach a cassette, in requests and responses.
SECRET_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"}
)
#: Messages waiting for the writer thread; past this a recording is dropped.
QUEUE_SIZE: Final = 4096

_Message = tuple["Take", str, float, bytes]


class Recorder:
    """The proxy's recorder: cassettes in ``directory``, written by one thread.

    ``redact``: more header names to redact; ``secrets``: values (keys, tokens)
    redacted wherever they appear. ``recorded`` and ``dropped`` count cassettes
    written and recordings given up.
    """

    def __init__(
        self,
        directory: str,
        *,
        redact: Iterable[str] = (),
        secrets: Iterable[str] = (),
        as_json: bool = False,
        queue_size: int | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.redact = SECRET_HEADERS | {name.lower() for name in redact}
        self.secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))
        self.as_json = as_json
        self.recorded = 0
        self.dropped = 0
        self._queue: queue.Queue[_Message | None] = queue.Queue(queue_size or QUEUE_SIZE)
        self._abandoned: collections.deque[Take] = collections.deque()
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def take(self, started: float) -> Take:
        """A recording for one exchange whose request arrived at ``started`` (monotonic)."""
        return Take(self, started)

    # -- called from the exchanges: never blocks --

    def _put(self, take: Take, kind: str, t: float, data: bytes) -> None:
        if take.dropped:
            return
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="ssekit-recorder", daemon=True
                    )
                    self._thread.start()
        try:
            self._queue.put_nowait((take, kind, t, data))
        except queue.Full:
            self._drop(take, "the recording queue is full (the disk is slower than the streams)")

    def _drop(self, take: Take, why: str) -> None:
        with self._lock:  # from the event loop (queue full) or the writer (disk error)
            if take.dropped:
                return
            take.dropped = True
            self.dropped += 1
        self._abandoned.append(take)  # the writer removes its partial file
        report(
            logging.WARNING,
            f"ssekit: recording {take.name or '(not started)'} dropped: {why}; the stream "
            "goes on unrecorded",
            {"notice": "record_dropped", "cassette": take.name, "reason": why},
            as_json=self.as_json,
        )

    # -- the writer thread --

    def _run(self) -> None:
        while True:
            message = self._queue.get()
            try:
                if message is None:
                    return
                take, kind, t, data = message
                if not take.dropped:
                    try:
                        self._write(take, kind, t, data)
                    except OSError as exc:
                        self._drop(take, f"writing {take.name} failed: {exc}")
                while self._abandoned:
                    self._abandoned.popleft().discard()
            finally:
                self._queue.task_done()

    def _write(self, take: Take, kind: str, t: float, data: bytes) -> None:
        if kind == "head":
            take.open(self.directory)
            take.write(data)
        elif kind == "chunk":
            take.chunks += 1
            take.size += len(data)
            take.write(chunk_line(t, data))
        else:  # end
            take.write(end_line(data.decode(), t, take.chunks, take.size))
            take.finish()
            self.recorded += 1

    def wait_idle(self) -> None:
        """Return once every message queued so far is written (for tests and shutdown)."""
        self._queue.join()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread (blocks up to ``timeout``)."""
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=timeout)
            self._thread.join(timeout)
            self._thread = None

    def clean_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
        """Header pairs as cassette text, secret values replaced."""
        return [
            (
                name.decode("latin-1"),
                REDACTED
                if name.lower().decode("latin-1") in self.redact
                else self.clean(value.decode("latin-1")),
            )
            for name, value in headers
        ]

    def clean(self, text: str) -> str:
        """``text`` with every configured secret replaced."""
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text


class Take:
    """One exchange's recording. Its methods only queue (never wait, never raise);
    the writer thread does the rest. ``dropped``: given up (queue full, disk error)."""

    __slots__ = (
        "_file",
        "_partial",
        "_recorder",
        "_request",
        "chunks",
        "dropped",
        "name",
        "size",
        "started",
    )

    def __init__(self, recorder: Recorder, started: float) -> None:
        self._recorder = recorder
        self.started = started
        self._request: tuple[str, str, list[tuple[str, str]], bytes] | None = None
        self.name = ""
        self.dropped = False
        self.chunks = 0
        self.size = 0
        self._file: IO[bytes] | None = None
        self._partial: Path | None = None

    def request(
        self, method: str, target: str, headers: Iterable[tuple[bytes, bytes]], body: bytes
    ) -> None:
        """The client's request, as it came (secrets replaced here, before any queue)."""
        rec = self._recorder
        clean_body = rec.clean(body.decode("latin-1")).encode("latin-1") if rec.secrets else body
        self._request = (method, rec.clean(target), rec.clean_headers(headers), clean_body)

    def head(self, status: int, reason: bytes, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """The response head arrived: the cassette starts."""
        if self._request is None or self.name:
            return
        rec = self._recorder
        method, target, request_headers, body = self._request
        now = time.monotonic()
        slug = re.sub(r"[^A-Za-z0-9]+", "-", target.partition("?")[0]).strip("-")[:60]
        stamp = utc_time(time.time()).replace(":", "").replace("-", "")
        self.name = f"{stamp}-{os.getpid()}-{next(rec._numbers):05d}-{method}-{slug}.jsonl"
        line = header_line(
            method=method,
            target=target,
            request_headers=request_headers,
            body=body,
            status=status,
            reason=reason.decode("latin-1"),
            response_headers=rec.clean_headers(headers),
            t=now - self.started,
            recorded_at=utc_time(time.time()),
        )
        rec._put(self, "head", 0.0, line)

    def chunk(self, data: bytes) -> None:
        """A body chunk as received (stamped now)."""
        if self.name:
            self._recorder._put(self, "chunk", time.monotonic() - self.started, bytes(data))

    def end(self, outcome: str) -> None:
        """How the exchange ended (``Outcome`` values); the cassette is complete."""
        if self.name:
            self._recorder._put(self, "end", time.monotonic() - self.started, outcome.encode())

    # -- the writer thread's side --

    def open(self, directory: Path) -> None:
        self._partial = directory / (self.name + ".partial")
        self._file = open(self._partial, "wb")

    def write(self, line: bytes) -> None:
        assert self._file is not None
        self._file.write(line)

    def finish(self) -> None:
        assert self._partial is not None
        assert self._file is not None
        self._file.close()
        self._file = None
        self._partial.replace(self._partial.with_suffix(""))

    def discard(self) -> None:
        """Close and remove the partial file of a dropped recording."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if self._partial is not None:
            with contextlib.suppress(OSError):
                self._partial.unlink()
