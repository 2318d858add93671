"""``--workers N``: N proxy processes on one port, supervised by the process that started them.

Each worker is a whole single-process proxy that binds the port itself with
SO_REUSEPORT, so the kernel spreads new connections over the workers (one
shared accept socket would hand most of them to a few warm workers). The
supervisor holds the port (bound, never listening) so that a replacement worker
can always bind it again, forwards SIGTERM/SIGINT (each worker drains), and
replaces a worker that dies. Workers leave their counters in a shared
directory every second; ``/metrics`` on any worker shows the sum over all.

Signals: SIGTERM and SIGINT drain every worker, then the supervisor exits.
SIGHUP is ignored, by the supervisor and the workers (there is no reload: the
options are fixed at start; a terminal hanging up does not stop the proxy
either), except that with ``--usage-log`` the supervisor passes it on to the
workers, which reopen the log (rotation). A child (worker, or the built-in
mock) that finds its supervisor gone, however it died, drains and exits: it
watches a pipe (:class:`Lifeline`) only the supervisor holds open for
writing, so no worker serves on unsupervised.

Processes are forked before any event loop or thread exists in the supervisor.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from .._errors import ConfigError
from ._stats import Metrics

__all__ = ("Lifeline", "Notice", "Supervisor", "remove_if_unowned", "reserve_port")

log = logging.getLogger("ssekit.proxy")

#: After the drain deadline, how long workers get to exit before SIGKILL.
EXIT_GRACE: Final = 5.0
#: A worker dying sooner than this after its start is restarted after a pause.
QUICK_DEATH: Final = 1.0

#: How the supervisor tells the operator what it does: ``notice(name, sentence, **fields)``.
Notice = Callable[..., None]


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


class Lifeline:
    """A pipe whose write end only the supervisor holds: its children read EOF once it is
    gone, whatever ended it (SIGKILL included), and nothing is ever written to it."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        #: Set in a child once the supervisor is gone.
        self.gone = threading.Event()

    def watch(self, on_gone: Callable[[], None]) -> None:
        """In a child: call ``on_gone`` (from a thread of its own) when the supervisor is gone."""
        os.close(self._write)  # else this child would keep its own lifeline open

        def wait() -> None:
            while os.read(self._read, 1):
                pass
            self.gone.set()
            on_gone()

        threading.Thread(target=wait, name="ssekit-lifeline", daemon=True).start()


def fork(run: Callable[[], int], lifeline: Lifeline, notice: Notice) -> int:
    """Start ``run`` in a child process; returns the child's pid (the child never returns).

    The child takes SIGTERM and SIGINT as ``run`` sets them up (the default: exit),
    ignores SIGHUP (the supervisor's call), and sends itself SIGTERM when the
    supervisor is gone (a worker then drains).
    """
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            supervisor = os.getppid()

            def orphaned() -> None:
                notice(
                    "supervisor_gone",
                    f"the supervisor (pid {supervisor}) is gone: pid {os.getpid()} drains "
                    "and exits",
                    pid=os.getpid(),
                )
                os.kill(os.getpid(), signal.SIGTERM)

            lifeline.watch(orphaned)
            code = run()
        except BaseException:
            log.exception("ssekit: worker failed")
        finally:
            logging.shutdown()
            os._exit(code)
    return pid


class Supervisor:
    """Keeps ``count`` workers running until told to stop.

    It takes SIGTERM, SIGINT and SIGHUP from its construction on (a SIGTERM that
    comes while the workers start still drains them). ``run`` returns the exit
    status: 0 after a stop by signal once every worker exited (drained), 2 when
    a worker reports a configuration error (status 2).
    """

    def __init__(
        self,
        count: int,
        drain_timeout: float,
        *,
        metrics_dir: Path | None = None,
        notice: Notice,
        hangup_workers: bool = False,
    ) -> None:
        self._count = count
        self._hangup_workers = hangup_workers  # --usage-log: SIGHUP reopens it in each
        self._drain_timeout = drain_timeout
        self._metrics_dir = metrics_dir
        self._notice = notice
        self._run_worker: Callable[[int], int] = lambda index: 1
        self._workers: dict[int, tuple[int, float]] = {}  # pid -> (index, started)
        self._hangups = 0  # SIGHUPs not yet reported
        self.lifeline = Lifeline()
        self.stopping = False
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hangup)

    @property
    def pids(self) -> list[int]:
        return list(self._workers)

    def fork(self, run: Callable[[], int]) -> int:
        """Start a child that is not a worker (the built-in mock): it dies with the supervisor."""
        return fork(run, self.lifeline, self._notice)

    def start(self, run_worker: Callable[[int], int]) -> None:
        """Fork the workers, each running ``run_worker(index)``."""
        self._run_worker = run_worker
        for index in range(self._count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        pid = fork(lambda: self._run_worker(index), self.lifeline, self._notice)
        self._workers[pid] = (index, time.monotonic())
        if self._metrics_dir is not None:
            # A pid used again: the dead process's counters move aside, still counted.
            with contextlib.suppress(OSError):
                path = self._metrics_dir / f"{pid}.json"
                path.rename(path.with_name(f"{pid}-{time.time_ns()}.json"))

    def _on_stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _on_hangup(self, signum: int, frame: object) -> None:
        self._hangups += 1  # reported by the loop, not from inside a signal handler

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT, then drain every worker; the exit status."""
        while not self.stopping:
            if self._hangups and self._hangup_workers:
                self._hangups = 0
                for worker in self._workers:
                    _signal(worker, signal.SIGHUP)
                self._notice("usage_log_reopened", "SIGHUP: the workers reopen the usage log")
            if self._hangups:
                self._hangups = 0
                self._notice(
                    "sighup_ignored",
                    "SIGHUP ignored: ssekit does not reload; restart it to change options "
                    "(SIGTERM drains the workers)",
                )
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0 or pid not in self._workers:
                time.sleep(0.05)
                continue
            index, started = self._workers.pop(pid)
            self._retire(pid)
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
        self._notice(
            "draining",
            f"shutting down, draining {len(self._workers)} workers up to {self._drain_timeout:g}s",
            workers=len(self._workers),
            drain_timeout_s=self._drain_timeout,
        )
        self._stop_all()
        return 0

    def _retire(self, pid: int) -> None:
        """A dead worker's counters stay in the sum, its gauges leave it (it serves nothing)."""
        if self._metrics_dir is None:
            return
        path = self._metrics_dir / f"{pid}.json"
        with contextlib.suppress(OSError):
            (self._metrics_dir / f"{pid}.tmp").unlink(missing_ok=True)
        try:
            snapshot = json.loads(path.read_text())
        except (OSError, ValueError):
            return  # it died before it first left its counters
        scratch = path.with_suffix(".retiring")
        scratch.write_text(json.dumps(Metrics.retired(snapshot)))
        scratch.replace(path)  # at once: a sibling reading it sees one or the other

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


def remove_if_unowned(metrics_dir: Path) -> None:
    """Remove the workers' metrics directory once no live worker's counters are in it.

    Called by a worker leaving after its supervisor died (the supervisor removes it
    otherwise); the last one out removes it, whatever dead workers left behind.
    """
    for path in metrics_dir.glob("*.json"):
        try:
            if not json.loads(path.read_text()).get("retired"):
                return  # a sibling still serving (or draining)
        except (OSError, ValueError):
            continue
    shutil.rmtree(metrics_dir, ignore_errors=True)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
