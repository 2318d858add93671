"""The app the shutdown tests run under a real ``uvicorn`` process (``--app-dir tests``).

Producers write ``start <name>`` and ``finally <name>`` lines to the file named by
``SSEKIT_TEST_LOG`` (opened per line, so a killed process loses nothing written).

- ``/ticks?name=a``: an endless ssekit stream, an event every 10 ms.
- ``/late?name=c``: waits 0.5 s before answering with an endless ssekit stream.
- ``/plain``: a plain ASGI streaming response (no ssekit) that never ends by itself.
- ``/blocked?name=s``: a sync producer that sends one event, then blocks in ``next()``
  for ever (a thread waiting on a queue nothing fills).

uvicorn logs through :class:`JsonLines` (``--log-config``), so the tests read its records.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import traceback
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

import ssekit
from ssekit.starlette import EventSourceResponse


def note(line: str) -> None:
    with open(os.environ["SSEKIT_TEST_LOG"], "a") as log:
        log.write(line + "\n")


async def endless(name: str) -> AsyncIterator[Any]:
    note(f"start {name}")
    try:
        for n in range(100_000):
            yield ssekit.Event(data=f"tick {n}", id=str(n))
            await anyio.sleep(0.01)
    finally:
        note(f"finally {name}")


async def ticks(request: Request) -> EventSourceResponse:
    return EventSourceResponse(endless(request.query_params["name"]))


async def late(request: Request) -> EventSourceResponse:
    await anyio.sleep(0.5)  # the signal comes meanwhile: the stream starts after it
    return EventSourceResponse(endless(request.query_params["name"]))


class Plain:
    """An ASGI app (Starlette routes an instance to it as it is)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        head = [(b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        for _ in range(100_000):
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            await anyio.sleep(0.01)


def stuck(name: str) -> Iterator[Any]:
    note(f"start {name}")
    try:
        yield ssekit.Event(data=f"first {name}")
        queue.Queue().get()  # nothing ever fills it
    finally:
        note(f"finally {name}")


async def blocked(request: Request) -> EventSourceResponse:
    return EventSourceResponse(stuck(request.query_params["name"]))


routes = [
    Route("/ticks", ticks),
    Route("/late", late),
    Route("/plain", Plain()),
    Route("/blocked", blocked),
]
app = Starlette(routes=routes)


class JsonLines(logging.Formatter):
    """One JSON object a line per record: its logger, level and message and, with an
    exception, its type and the file of every frame in its traceback (``exc_files``,
    causes, contexts and group members included)."""

    def format(self, record: logging.LogRecord) -> str:
        exc = record.exc_info[1] if record.exc_info else None
        line = {
            "logger": record.name,
            "level": record.levelno,
            "message": record.getMessage(),
            "exc_type": None if exc is None else type(exc).__name__,
            "exc_files": _files(exc),
        }
        return json.dumps(line)


def _files(exc: BaseException | None) -> list[str]:
    files: list[str] = []
    seen: set[int] = set()
    pending = [exc]
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        files += [frame.filename for frame in traceback.extract_tb(error.__traceback__)]
        pending += [error.__cause__, error.__context__, *getattr(error, "exceptions", ())]
    return files


#: uvicorn's ``--log-config`` (as JSON): every record, uvicorn's included, as a JSON line.
LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "_shutdown_app.JsonLines"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stderr",
        }
    },
    "root": {"handlers": ["stderr"], "level": "INFO"},
}
