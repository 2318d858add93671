"""``EventSourceResponse`` for Starlette and FastAPI, on :mod:`ssekit.asgi`.

A thin :class:`starlette.responses.Response`: the streaming, the disconnect,
pings and timeouts are :func:`ssekit.asgi.stream_events`'. Only this module
imports Starlette (extra ``ssekit[starlette]``); ``import ssekit`` does not.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable, Mapping

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .asgi import EventStreamResponse, Item, response_headers

__all__ = ("EventSourceResponse",)


class EventSourceResponse(Response):
    """Stream ``content``, an (async) iterable of events, as ``text/event-stream``.

    In: ``content`` yields :class:`ssekit.Event`, ``str`` (data), ``bytes``
    (wire bytes as they are) or ``dict`` (fields by name);
    ``status_code``, ``headers`` (added to the event stream's own:
    ``Content-Type: text/event-stream; charset=utf-8``, ``Cache-Control:
    no-cache``, ``X-Accel-Buffering: no``; yours win by name) and
    ``background`` as for any Starlette response (the background task runs
    once the stream has ended, also after a disconnect); ``ping`` (seconds: ``: ping``
    comments between events after that long without a write) and
    ``send_timeout`` (seconds a write to a stuck client may take) as in
    :func:`ssekit.asgi.stream_events`; :mod:`ssekit.asgi` documents the disconnect,
    shutdown and error behaviour. ``headers`` can be changed on
    ``response.headers`` until the response is sent.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        content: AsyncIterable[Item] | Iterable[Item],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        background: BackgroundTask | None = None,
        *,
        ping: float | None = None,
        send_timeout: float | None = None,
    ) -> None:
        self._app = EventStreamResponse(
            content, status=status_code, ping=ping, send_timeout=send_timeout
        )
        self.body = b""
        self.status_code = status_code
        self.background = background
        self.raw_headers = response_headers(headers or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._app
        # FastAPI and middleware may change these after construction.
        app.status, app.raw_headers = self.status_code, self.raw_headers
        await app(scope, receive, send)
        if self.background is not None:
            await self.background()
