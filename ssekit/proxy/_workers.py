"""``--workers N``: N proxy processes on one port, supervised by the process that started them.

Each worker is a whole single-process proxy that binds the port itself with
SO_REUSEPORT, so the kernel spreads new connections over the workers (one
shared accept socket would hand most of them to a few warm workers). The
supervisor holds the port (bound, never listening) so that a replacement worker
can always bind it again, forwards SIGTERM/SIGINT (each worker drains), and
replaces a worker that dies. Workers leave their counters in a shared
directory every second; ``/metrics`` on any worker shows the sum over all.

Processes are forked before any event loop or thread exists in the supervisor.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Final

from .._errors import ConfigError

__all__ = ("Supervisor", "reserve_port")

log = logging.getLogger("ssekit.proxy")

#: After the drain deadline, how long workers get to exit before SIGKILL.
EXIT_GRACE: Final = 5.0
#: A worker dying sooner than this after its start is restarted after a pause.
QUICK_DEATH: Final = 1.0


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind ``host:port`` with SO_REUSEPORT (port 0: a free one) and keep it, not listening.

    Raises :class:`ConfigError` when the address cannot be bound (in use).
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("--workers needs SO_REUSEPORT, which this OS does not offer")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another "
            "--listen address or stop what uses it"
        ) from exc
    return sock


def fork(run: Callable[[], int]) -> int:
    """Start ``run`` in a child process; returns the child's pid (the child never returns)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = run()
        except BaseException:
            log.exception("ssekit: worker failed")
        finally:
            logging.shutdown()
            os._exit(code)
    return pid


class Supervisor:
    """Keeps ``count`` workers running ``run_worker(index)`` until told to stop.

    ``run`` returns the exit status: 0 after a stop by signal once every worker
    exited (drained), 2 when a worker reports a configuration error (status 2).
    """

    def __init__(self, count: int, run_worker: Callable[[int], int], drain_timeout: float) -> None:
        self._count = count
        self._run_worker = run_worker
        self._drain_timeout = drain_timeout
        self._workers: dict[int, tuple[int, float]] = {}  # pid -> (index, started)
        self._stop = False

    @property
    def pids(self) -> list[int]:
        return list(self._workers)

    def start(self) -> None:
        for index in range(self._count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        pid = fork(lambda: self._run_worker(index))
        self._workers[pid] = (index, time.monotonic())

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stop = True

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT, then drain every worker; the exit status."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        while not self._stop:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0 or pid not in self._workers:
                time.sleep(0.05)
                continue
            index, started = self._workers.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            if code == 2:
                log.error("ssekit: worker %d exited with a configuration error", index)
                self._stop_all()
                return 2
            log.error(
                "ssekit: worker %d (pid %d) exited with status %d; starting a replacement",
                index, pid, code,
            )  # fmt: skip
            if time.monotonic() - started < QUICK_DEATH:
                time.sleep(QUICK_DEATH)  # a worker that cannot start must not spin
            self._spawn(index)
        self._stop_all()
        return 0

    def _stop_all(self) -> None:
        """SIGTERM every worker (each drains), wait for them, SIGKILL what outlives that."""
        for pid in self._workers:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + self._drain_timeout + EXIT_GRACE
        while self._workers and time.monotonic() < deadline:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid:
                self._workers.pop(pid, None)
            else:
                time.sleep(0.05)
        for pid in self._workers:
            _signal(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        self._workers.clear()


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
