"""Real uvicorn servers on 127.0.0.1 free ports, in a thread of this process, under deadlines.

``running(app)`` starts uvicorn on a socket bound to port 0 and yields the base URL and
the ``uvicorn.Server``; leaving stops it (bounded) and fails the test if it did not stop.
Every record uvicorn logs at ERROR or above is collected in ``errors`` for tests to check.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn


@dataclass
class Running:
    url: str
    server: uvicorn.Server
    thread: threading.Thread
    errors: list[logging.LogRecord] = field(default_factory=list)

    def stop(self, timeout: float = 15.0) -> float:
        """Ask uvicorn to shut down (as SIGTERM does); seconds it took to stop."""
        started = time.monotonic()
        self.server.should_exit = True
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"uvicorn did not stop within {timeout}s"
        return time.monotonic() - started


class _Collect(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


@contextlib.contextmanager
def running(app: Any, sock: socket.socket | None = None, **config: Any) -> Iterator[Running]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) until the block is left.

    ``sock``: a socket already bound (see :func:`reserve_port`), closed on leaving.
    """
    sock = sock or reserve_port()
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, **{"log_level": "warning", "access_log": False, **config})
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    state = Running(f"http://127.0.0.1:{port}", server, thread)
    handler = _Collect(state.errors)
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "uvicorn", "asyncio")]
    for logger in loggers:
        logger.addHandler(handler)
    thread.start()
    try:
        wait_for(lambda: server.started, 10, "uvicorn did not start")
        yield state
    finally:
        if thread.is_alive():
            state.stop()
        for logger in loggers:
            logger.removeHandler(handler)
        sock.close()


def reserve_port() -> socket.socket:
    """A socket bound to a free port on 127.0.0.1, not listening: connections are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def wait_for(condition: Callable[[], object], seconds: float, message: str) -> None:
    """Poll ``condition`` every 5 ms until true; fail with ``message`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.005)
