"""I/O of the client: connections through the proxy's upstream code, events through the Decoder."""

from __future__ import annotations

import json as jsonlib
import random as randomlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from typing import Protocol

import anyio
from anyio.from_thread import start_blocking_portal

from .._decoder import Decoder
from .._errors import ClientError, ConfigError, UpstreamError
from .._event import Event
from ..openai import Chunk, aiter_chunks, join_deltas
from ..proxy._config import Origin
from ..proxy._headers import get_header
from ..proxy._upstream import UpstreamConnection, make_ssl_context, open_connection
from ._policy import Reconnector, RetryPolicy, Verdict

__all__ = ("EventListener", "chat_chunks", "chat_text", "connect", "listen", "stream_sync")

MAX_ERROR_BODY = 64 * 1024


async def _error_body(conn: UpstreamConnection, idle_timeout: float) -> str:
    body = b""
    try:
        async for chunk in conn.receive_body(idle_timeout=idle_timeout):
            body += chunk
            if len(body) >= MAX_ERROR_BODY:
                break
    except UpstreamError:
        pass
    return body.decode("utf-8", "replace")


async def connect(
    url: str,
    *,
    method: str = "GET",
    json: object = None,
    headers: dict[str, str] | None = None,
    policy: RetryPolicy | None = None,
    ca_file: str | None = None,
    proxy: str | None = None,
    connect_timeout: float = 10.0,
    idle_timeout: float = 300.0,
    on_open: Callable[[], Awaitable[None]] | None = None,
    random: Callable[[], float] = randomlib.random,
) -> AsyncGenerator[Event, None]:
    """Iterate the events of an SSE stream, reconnecting as an EventSource does.

    GET by default; ``json`` sends a JSON body (use ``method="POST"``);
    ``headers`` adds request headers (``Authorization``, which a browser's
    EventSource cannot send). https is verified (``ca_file`` for a private CA);
    ``proxy`` is an ``http://host:port`` CONNECT proxy. A network error or the
    end of a GET stream reconnects after the reconnection time (``retry:``),
    with Last-Event-ID; 204 stops; other statuses and content types raise
    :class:`ssekit.ResponseError`; running out of retries or time raises
    :class:`ssekit.ClientError`. No byte for ``idle_timeout`` counts as a
    network error. Leaving the loop (or cancelling) closes the connection.
    ``on_open`` is awaited each time a connection opens; ``random`` is the
    jitter's source of numbers in [0, 1).
    """
    base, _, query = url.partition("?")
    try:
        origin = Origin.from_url(base)
    except ConfigError as exc:
        raise ClientError(f"cannot open {url!r}: {exc}") from exc
    target = (origin.base_path or "/") + (f"?{query}" if query else "")
    ssl_context = make_ssl_context(ca_file) if origin.scheme == "https" else None
    proxy_origin = Origin.from_url(proxy) if proxy else None
    body = b"" if json is None else jsonlib.dumps(json).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    reconnector = Reconnector(policy or RetryPolicy(), method=method, now=time.monotonic())
    while True:
        error: Exception | None = None
        try:
            conn = await open_connection(
                origin, connect_timeout=connect_timeout, ssl_context=ssl_context, proxy=proxy_origin
            )
            try:
                request = [
                    (b"host", origin.authority.encode()),
                    *reconnector.request_headers(),
                    *extra,
                ]
                if json is not None:
                    request.append((b"content-type", b"application/json"))
                if body or method.upper() != "GET":
                    request.append((b"content-length", b"%d" % len(body)))
                await conn.send_request(method.upper(), target, request, body)
                response = await conn.receive_response(first_byte_timeout=idle_timeout)
                content_type = (get_header(response.headers, b"content-type") or b"").decode()
                decision = reconnector.on_response(response.status_code, content_type)
                if decision.verdict is Verdict.FAIL:
                    text = await _error_body(conn, idle_timeout)
                    decision = reconnector.on_response(response.status_code, content_type, text)
                    assert decision.error is not None
                    raise decision.error
                if decision.verdict is Verdict.STOP:
                    return
                if on_open is not None:
                    await on_open()
                decoder = Decoder()
                async for chunk in conn.receive_body(idle_timeout=idle_timeout):
                    events = decoder.feed(chunk)
                    reconnector.on_progress(decoder.last_event_id, decoder.retry)
                    for event in events:
                        yield event
            finally:
                # Also on cancellation or an abandoned iterator: close at once.
                await conn.aclose()
        except UpstreamError as exc:
            error = exc
        decision = reconnector.on_end(now=time.monotonic(), random=random(), error=error)
        if decision.verdict is Verdict.STOP:
            return
        if decision.verdict is Verdict.FAIL:
            assert decision.error is not None
            raise decision.error
        await anyio.sleep(decision.delay)


class EventListener(Protocol):
    """The four callbacks of the Java SDKs' listeners, as coroutines."""

    async def on_open(self) -> None: ...

    async def on_event(self, event: Event) -> None: ...

    async def on_closed(self) -> None: ...

    async def on_failure(self, error: Exception) -> None: ...


async def listen(url: str, listener: EventListener, **options: object) -> None:
    """Run a stream into ``listener``: ``on_open`` per connection, ``on_event`` per event,
    then ``on_closed`` when it ends, or ``on_failure`` with the error (not raised)."""
    try:
        async for event in connect(url, on_open=listener.on_open, **options):  # type: ignore[arg-type]
            await listener.on_event(event)
    except (ClientError, UpstreamError) as exc:
        await listener.on_failure(exc)
    else:
        await listener.on_closed()


def stream_sync(url: str, **options: object) -> Iterator[Event]:
    """:func:`connect` for scripts without an event loop: a plain iterator of events."""
    with start_blocking_portal() as portal:
        events = connect(url, **options)  # type: ignore[arg-type]
        try:
            while True:
                try:
                    yield portal.call(events.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            portal.call(events.aclose)


async def chat_chunks(url: str, body: dict[str, object], **options: object) -> AsyncIterator[Chunk]:
    """POST an OpenAI-style chat request with ``"stream": true``; yield each chunk object.

    Raises :class:`ssekit.StreamIncomplete` when the stream is cut before
    ``[DONE]``, :class:`ssekit.APIErrorEvent` when it reports an error.
    """
    events = connect(url, method="POST", json={**body, "stream": True}, **options)  # type: ignore[arg-type]
    async for chunk in aiter_chunks(events):
        yield chunk


async def chat_text(url: str, body: dict[str, object], **options: object) -> str:
    """The whole answer text of a streamed chat completion (deltas joined)."""
    return join_deltas([chunk async for chunk in chat_chunks(url, body, **options)])
