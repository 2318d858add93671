"""I/O of the client: connections through the proxy's upstream code, events through the Decoder."""

from __future__ import annotations

import json as jsonlib
import random as randomlib
import ssl
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import urljoin

import anyio
from anyio.from_thread import start_blocking_portal

from .._decoder import Decoder
from .._errors import ClientError, ConfigError, ResponseError, UpstreamError
from .._event import Event
from .._http import (
    Origin,
    OriginConnection,
    ResponseHead,
    get_header,
    make_ssl_context,
    open_connection,
)
from ..openai import Chunk, aiter_chunks, join_deltas
from ._policy import (
    MAX_ERROR_BODY,
    Reconnector,
    RetryPolicy,
    Verdict,
    credential_names,
    judge_response,
    same_origin,
)

__all__ = (
    "MAX_REDIRECTS",
    "EventListener",
    "EventStream",
    "chat_chunks",
    "chat_text",
    "connect",
    "listen",
    "stream_sync",
)


async def _error_body(conn: OriginConnection, idle_timeout: float) -> str:
    body = b""
    try:
        async for chunk in conn.receive_body(idle_timeout=idle_timeout):
            body += chunk
            if len(body) >= MAX_ERROR_BODY:
                break
    except UpstreamError:
        pass
    return body.decode("utf-8", "replace")


REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
#: Fetch's redirect limit, which a browser's EventSource is under.
MAX_REDIRECTS: Final = 20


def connect(
    url: str,
    *,
    method: str = "GET",
    json: object = None,
    headers: dict[str, str] | None = None,
    credential_headers: Collection[str] = (),
    policy: RetryPolicy | None = None,
    ca_file: str | None = None,
    proxy: str | None = None,
    connect_timeout: float = 10.0,
    idle_timeout: float = 300.0,
    on_open: Callable[[], Awaitable[None]] | None = None,
    random: Callable[[], float] = randomlib.random,
) -> EventStream:
    """The events of an SSE stream, reconnecting as an EventSource does.

    Use it as ``async with connect(url) as events: async for event in
    events: ...``: leaving the block (``break``, ``return``, an exception,
    cancellation) closes the connection at once. A bare ``async for`` over it
    works too, but a ``break`` then leaves the connection open until
    ``aclose()`` or garbage collection.

    GET by default; ``json`` sends a JSON body (use ``method="POST"``);
    ``headers`` adds request headers (``Authorization``, which a browser's
    EventSource cannot send). https is verified (``ca_file`` for a private CA);
    ``proxy`` is an ``http://host:port`` CONNECT proxy. Redirects (301, 302,
    303, 307, 308) are followed, at most :data:`MAX_REDIRECTS` per connection,
    as fetch does: 303 (and 301/302 after a POST) turns the request into a GET
    without body. A redirect that leaves the origin (another scheme, host or
    port) drops every credential header, for that hop and the rest of the
    connection's redirects: ``Authorization``, ``Proxy-Authorization``,
    ``Cookie``, ``api-key``, ``x-api-key`` (:data:`CREDENTIAL_HEADERS`) and the
    names in ``credential_headers``; a same-origin redirect keeps them. A
    network error (the first connection's too), a status in the policy's
    ``retry_statuses`` or the end of a GET stream reconnects (to ``url``, with
    every header again) after the reconnection time (``retry:``; see
    :class:`RetryPolicy` for the floor and the cap), with Last-Event-ID; 204
    stops; other statuses and content types, or too many redirects, raise
    :class:`ssekit.ResponseError`; running out of retries or time raises
    :class:`ssekit.RetriesExhausted`. No byte for ``idle_timeout`` counts as
    a network error. ``on_open`` is awaited each time a connection opens;
    ``random`` is the jitter's source of numbers in [0, 1).
    """
    reconnector = Reconnector(policy or RetryPolicy(), method=method, now=time.monotonic())
    request = _Request(
        url=url,
        method=method.upper(),
        body=b"" if json is None else jsonlib.dumps(json).encode(),
        json=json is not None,
        headers=[(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        credentials=frozenset(n.encode("latin-1") for n in credential_names(credential_headers)),
        ca_file=ca_file,
        proxy=_origin(proxy) if proxy else None,
        connect_timeout=connect_timeout,
        idle_timeout=idle_timeout,
    )
    _origin(url.partition("#")[0].partition("?")[0])  # a bad URL fails here, not when iterated
    return EventStream(_events(request, reconnector, on_open=on_open, random=random), reconnector)


class EventStream:
    """What :func:`connect` returns: an async iterator of events and an async context manager.

    ``async with`` closes the connection when the block is left, however it
    is left; ``aclose()`` does the same by hand. ``last_event_id`` is the ID
    that would be sent on the next reconnection.
    """

    def __init__(self, events: AsyncGenerator[Event, None], reconnector: Reconnector) -> None:
        self._events = events
        self._reconnector = reconnector

    @property
    def last_event_id(self) -> str:
        return self._reconnector.last_event_id

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        """Close the connection now (idempotent)."""
        await self._events.aclose()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


@dataclass(frozen=True, slots=True)
class _Request:
    url: str
    method: str
    body: bytes
    json: bool
    headers: list[tuple[bytes, bytes]]
    credentials: frozenset[bytes]  # header names a cross-origin redirect drops, lower case
    ca_file: str | None
    proxy: Origin | None
    connect_timeout: float
    idle_timeout: float


def _origin(url: str) -> Origin:
    try:
        return Origin.from_url(url)
    except ConfigError as exc:
        raise ClientError(f"cannot open {url!r}: {exc}") from exc


async def _events(
    request: _Request,
    reconnector: Reconnector,
    *,
    on_open: Callable[[], Awaitable[None]] | None,
    random: Callable[[], float],
) -> AsyncGenerator[Event, None]:
    idle_timeout = request.idle_timeout
    while True:
        error: Exception | None = None
        try:
            conn, response = await _open(request, reconnector)
            try:
                content_type = (get_header(response.headers, b"content-type") or b"").decode()
                decision = reconnector.on_response(response.status_code, content_type)
                if decision.verdict is Verdict.STOP:
                    return
                if decision.verdict is not Verdict.OPEN:  # refused, or a status to retry
                    text = await _error_body(conn, idle_timeout)
                    refusal = judge_response(response.status_code, content_type, text).error
                    assert refusal is not None
                    if decision.verdict is Verdict.FAIL:
                        raise refusal
                    error = refusal
                else:
                    if on_open is not None:
                        await on_open()
                    # A new parser starts from the last event ID, as the
                    # EventSource's does: a connection that only sends comments
                    # must not lose it.
                    decoder = Decoder(last_event_id=reconnector.last_event_id)
                    async for chunk in conn.receive_body(idle_timeout=idle_timeout):
                        events = decoder.feed(chunk)
                        reconnector.on_chunk(
                            decoder.last_event_id, decoder.retry, events=len(events)
                        )
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


async def _open(
    request: _Request, reconnector: Reconnector
) -> tuple[OriginConnection, ResponseHead]:
    """Send the request, following redirects as fetch does; the connection and its response."""
    url, method, body, extra = request.url, request.method, request.body, request.headers
    json = request.json
    ssl_context: ssl.SSLContext | None = None
    for _ in range(MAX_REDIRECTS + 1):
        address, _, query = url.partition("#")[0].partition("?")
        origin = _origin(address)
        target = (origin.base_path or "/") + (f"?{query}" if query else "")
        if origin.scheme == "https" and ssl_context is None:
            ssl_context = make_ssl_context(request.ca_file)
        conn = await open_connection(
            origin,
            connect_timeout=request.connect_timeout,
            ssl_context=ssl_context if origin.scheme == "https" else None,
            proxy=request.proxy,
        )
        try:
            headers = [(b"host", origin.authority.encode()), *reconnector.request_headers(), *extra]
            if json:
                headers.append((b"content-type", b"application/json"))
            if body or method != "GET":
                headers.append((b"content-length", b"%d" % len(body)))
            await conn.send_request(method, target, headers, body)
            response = await conn.receive_response(first_byte_timeout=request.idle_timeout)
        except BaseException:
            await conn.aclose()
            raise
        location = get_header(response.headers, b"location")
        status = response.status_code
        if status not in REDIRECT_STATUSES or location is None:
            return conn, response
        await conn.aclose()
        url = urljoin(url, location.decode("latin-1"))
        if (status == 303 and method not in ("GET", "HEAD")) or (
            status in (301, 302) and method == "POST"
        ):
            method, body, json = "GET", b"", False
        moved = _origin(url.partition("#")[0].partition("?")[0])
        if not same_origin(
            (moved.scheme, moved.host, moved.port), (origin.scheme, origin.host, origin.port)
        ):
            # Credentials stay with their origin (fetch drops Authorization), and
            # stay dropped for the hops after this one, as fetch's do.
            extra = [(k, v) for k, v in extra if k not in request.credentials]
    raise ResponseError(
        f"more than {MAX_REDIRECTS} redirects from {request.url!r} (last to {url!r}); "
        "not reconnecting",
        status,
    )


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
        async with connect(url, on_open=listener.on_open, **options) as events:  # type: ignore[arg-type]
            async for event in events:
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


async def chat_chunks(
    url: str, body: dict[str, object], **options: object
) -> AsyncGenerator[Chunk, None]:
    """POST an OpenAI-style chat request with ``"stream": true``; yield each chunk object.

    Raises :class:`ssekit.StreamIncomplete` when the stream is cut before
    ``[DONE]``, :class:`ssekit.APIErrorEvent` when it reports an error.
    """
    stream = connect(url, method="POST", json={**body, "stream": True}, **options)  # type: ignore[arg-type]
    async with stream:
        async for chunk in aiter_chunks(stream):
            yield chunk


async def chat_text(url: str, body: dict[str, object], **options: object) -> str:
    """The whole answer text of a streamed chat completion (deltas joined)."""
    return join_deltas([chunk async for chunk in chat_chunks(url, body, **options)])
