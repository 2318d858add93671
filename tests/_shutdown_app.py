"""The app the shutdown tests run under a real ``uvicorn`` process (``--app-dir tests``).

Producers write ``start <name>`` and ``finally <name>`` lines to the file named by
``SSEKIT_TEST_LOG`` (opened per line, so a killed process loses nothing written).

- ``/ticks?name=a``: an endless ssekit stream, an event every 10 ms.
- ``/late?name=c``: waits 0.5 s before answering with an endless ssekit stream.
- ``/plain``: a plain ASGI streaming response (no ssekit) that never ends by itself.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
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


routes = [Route("/ticks", ticks), Route("/late", late), Route("/plain", Plain())]
app = Starlette(routes=routes)
