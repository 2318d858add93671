"""ssekit as an operator runs it: child processes, their listening line, their stderr."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
import time


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ssekit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def listening(proc: subprocess.Popen[str], what: str) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        if match and what in line:
            return match.group(1)
    proc.kill()
    raise AssertionError(f"no listening line in {seen}")


class Stderr:
    """A child's stderr, collected as it comes (so the pipe never fills)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.text = ""
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        with contextlib.suppress(ValueError, OSError):
            for line in proc.stderr:  # type: ignore[union-attr]
                self.text += line


def finish(proc: subprocess.Popen[str]) -> None:
    """Wait for ``proc`` (killing it after 20 s) and close its pipes."""
    try:
        proc.wait(timeout=20)
    finally:
        proc.kill()
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError, ValueError):
                    pipe.close()
