"""What each benchmark command needs installed, checked before it measures anything.

From a fresh clone: ``pip install -e '.[bench]'`` (ssekit itself and every peer).
A command missing a package says which, and how to install it, and exits with
status 2 (as a configuration error), instead of failing half-way with a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version

__all__ = ("DECODER", "ENCODER", "INSTALL", "INTEGRATIONS", "PROXY", "missing", "require")

#: The install command, run from the repository root.
INSTALL = "pip install -e '.[bench]'"

# Distribution names, as pip knows them.
DECODER = ("ssekit", "httpx", "httpx-sse", "sseclient-py", "launchdarkly-eventsource",
           "requests-sse", "openai")  # fmt: skip
ENCODER = ("ssekit", "sse-starlette")
INTEGRATIONS = ("ssekit", "httpx", "httpx-sse", "sse-starlette", "uvicorn", "starlette")
PROXY = ("ssekit", "anyio")


def missing(packages: Iterable[str]) -> list[str]:
    """The packages of ``packages`` that are not installed, in order, each once."""
    absent: list[str] = []
    for name in dict.fromkeys(packages):
        try:
            version(name)
        except PackageNotFoundError:
            absent.append(name)
    return absent


def require(command: str, packages: Iterable[str]) -> None:
    """Return when every package is installed; else say what is missing and exit 2."""
    absent = missing(packages)
    if absent:
        print(
            f"{command}: not installed: {', '.join(absent)}; from the repository root run "
            f"{INSTALL}",
            file=sys.stderr,
        )
        raise SystemExit(2)
