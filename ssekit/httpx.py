"""Server-sent events over httpx: a drop-in for httpx-sse, decoded by :class:`ssekit.Decoder`.

Switching from httpx-sse is an import change::

    from ssekit.httpx import aconnect_sse, connect_sse

``connect_sse(client, method, url, **kwargs)`` and ``aconnect_sse`` take what
``httpx.Client.stream`` takes and yield an :class:`EventSource`, whose
``iter_sse()`` / ``aiter_sse()`` yield :class:`ssekit.Event`. What differs
from httpx-sse is where it departs from the WHATWG spec, and that a response
that is not an event stream raises :class:`ssekit.ResponseError` instead of
yielding nothing. Reconnection is opt-in (``iter_sse(reconnect=RetryPolicy())``)
and follows the same sans-IO policy as :mod:`ssekit.client`.

Only this module imports httpx (extra ``ssekit[httpx]``); ``import ssekit`` does not.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from ._decoder import Decoder
from ._event import Event
from .client._policy import (
    MAX_ERROR_BODY,
    Decision,
    Reconnector,
    RetryPolicy,
    Verdict,
    judge_response,
)

__all__ = ("EventSource", "RetryPolicy", "aconnect_sse", "connect_sse")

#: What ``connect_sse`` sends unless the caller's headers already name it.
DEFAULT_HEADERS = (("Accept", "text/event-stream"), ("Cache-Control", "no-store"))


@dataclass(frozen=True, slots=True)
class _Request:
    """How to open the stream again: what ``connect_sse`` was given."""

    client: httpx.Client | httpx.AsyncClient
    method: str
    url: httpx.URL | str
    headers: httpx.Headers
    options: dict[str, Any]  # httpx.Client.stream's keyword arguments, forwarded unchanged

    def build(self, last_event_id: str) -> tuple[httpx.Request, dict[str, Any]]:
        """The request to send (Last-Event-ID when set) and the options ``send`` takes."""
        headers = self.headers.copy()
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        options = dict(self.options)
        sending: dict[str, Any] = {}
        for key in ("auth", "follow_redirects"):
            if key in options:
                sending[key] = options.pop(key)
        request = self.client.build_request(self.method, self.url, headers=headers, **options)
        return request, sending


class EventSource:
    """One event stream over httpx: ``response``, ``iter_sse()`` and ``aiter_sse()``.

    Built by :func:`connect_sse` / :func:`aconnect_sse` (which can reconnect),
    or by hand around a streaming ``httpx.Response`` (which cannot). The
    response is checked when iteration starts, so ``response`` can be looked
    at first, as with httpx-sse. After a reconnection ``response`` is the
    current connection's.
    """

    def __init__(self, response: httpx.Response, *, _request: _Request | None = None) -> None:
        self._response = response
        self._request = _request

    @property
    def response(self) -> httpx.Response:
        """The current connection's response (streaming: its body is what is iterated)."""
        return self._response

    def iter_sse(self, *, reconnect: RetryPolicy | None = None) -> Iterator[Event]:
        """Yield each event as soon as the chunk completing it arrives.

        Out: :class:`ssekit.Event` objects; an event left unterminated when the
        body ends is dropped, as the spec says. A 204 yields nothing.

        Raises :class:`ssekit.ResponseError` (status, content type, the start
        of the body) for anything but a 200 ``text/event-stream``;
        :class:`ssekit.LimitExceeded` past the decoder's bound; httpx's errors
        as they come when ``reconnect`` is None. With ``reconnect`` (needs
        :func:`connect_sse`): a network error or the end of the body opens the
        stream again after the reconnection time (``retry:``), sending
        ``Last-Event-ID``; a POST (any method but GET) is not replayed unless
        ``RetryPolicy(replay_post=True)``; giving up raises
        :class:`ssekit.RetriesExhausted`. The response of each connection is
        closed when it ends, and leaving :func:`connect_sse`'s block closes
        the current one.
        """
        reconnector = self._reconnector(reconnect)
        response: httpx.Response | None = self._response
        while True:
            error: httpx.TransportError | None = None
            try:
                if response is None:
                    response = self._response = self._send(reconnector.last_event_id)
                if _judge(response, response.iter_bytes()).verdict is Verdict.STOP:
                    return
                decoder = Decoder(last_event_id=reconnector.last_event_id)
                for chunk in response.iter_bytes():
                    events = decoder.feed(chunk)
                    reconnector.on_chunk(decoder.last_event_id, decoder.retry, events=len(events))
                    yield from events
                decoder.close()
            except httpx.TransportError as exc:
                if reconnect is None:
                    raise
                error = exc
            finally:
                if response is not None:
                    response.close()
            if reconnect is None:
                return
            delay = _next_delay(reconnector, error)
            if delay is None:
                return
            time.sleep(delay)
            response = None

    async def aiter_sse(
        self, *, reconnect: RetryPolicy | None = None
    ) -> AsyncGenerator[Event, None]:
        """Async twin of :meth:`iter_sse` over an ``httpx.AsyncClient`` response.

        Same events, errors and reconnection rules. An async generator: the
        ``async with aconnect_sse(...)`` block closes the response when left,
        even if a ``break`` left the generator suspended.
        """
        reconnector = self._reconnector(reconnect)
        response: httpx.Response | None = self._response
        while True:
            error: httpx.TransportError | None = None
            try:
                if response is None:
                    response = self._response = await self._asend(reconnector.last_event_id)
                if (await _ajudge(response, response.aiter_bytes())).verdict is Verdict.STOP:
                    return
                decoder = Decoder(last_event_id=reconnector.last_event_id)
                async for chunk in response.aiter_bytes():
                    events = decoder.feed(chunk)
                    reconnector.on_chunk(decoder.last_event_id, decoder.retry, events=len(events))
                    for event in events:
                        yield event
                decoder.close()
            except httpx.TransportError as exc:
                if reconnect is None:
                    raise
                error = exc
            finally:
                if response is not None:
                    await response.aclose()
            if reconnect is None:
                return
            delay = _next_delay(reconnector, error)
            if delay is None:
                return
            await anyio.sleep(delay)
            response = None

    def _send(self, last_event_id: str) -> httpx.Response:
        assert self._request is not None
        assert isinstance(self._request.client, httpx.Client)
        request, sending = self._request.build(last_event_id)
        return self._request.client.send(request, stream=True, **sending)

    async def _asend(self, last_event_id: str) -> httpx.Response:
        assert self._request is not None
        assert isinstance(self._request.client, httpx.AsyncClient)
        request, sending = self._request.build(last_event_id)
        return await self._request.client.send(request, stream=True, **sending)

    def _reconnector(self, policy: RetryPolicy | None) -> Reconnector:
        if policy is not None and self._request is None:
            raise TypeError(
                "reconnect= needs an EventSource from connect_sse or aconnect_sse, "
                "which know how to send the request again"
            )
        method = self._response.request.method
        return Reconnector(policy or RetryPolicy(), method=method, now=time.monotonic())


def _judge(response: httpx.Response, body: Iterator[bytes]) -> Decision:
    """Judge the response head; when refused, raise its ResponseError with the body's start."""
    content_type = response.headers.get("content-type", "")
    decision = judge_response(response.status_code, content_type)
    if decision.verdict is Verdict.FAIL:
        start = bytearray()
        for chunk in body:
            start += chunk
            if len(start) >= MAX_ERROR_BODY:
                break
        raise _refusal(response.status_code, content_type, start)
    return decision


async def _ajudge(response: httpx.Response, body: AsyncIterator[bytes]) -> Decision:
    """Async twin of :func:`_judge`."""
    content_type = response.headers.get("content-type", "")
    decision = judge_response(response.status_code, content_type)
    if decision.verdict is Verdict.FAIL:
        start = bytearray()
        async for chunk in body:
            start += chunk
            if len(start) >= MAX_ERROR_BODY:
                break
        raise _refusal(response.status_code, content_type, start)
    return decision


def _refusal(status: int, content_type: str, body: bytearray) -> Exception:
    text = bytes(body[:MAX_ERROR_BODY]).decode("utf-8", "replace")
    error = judge_response(status, content_type, text).error
    assert error is not None
    return error


def _next_delay(reconnector: Reconnector, error: httpx.TransportError | None) -> float | None:
    """Seconds to wait before reconnecting, None to stop; raises the policy's error on giving up."""
    decision = reconnector.on_end(now=time.monotonic(), random=random.random(), error=error)
    if decision.verdict is Verdict.FAIL:
        assert decision.error is not None
        raise decision.error
    if decision.verdict is Verdict.STOP:
        return None
    return decision.delay


def _prepare(
    client: httpx.Client | httpx.AsyncClient,
    method: str,
    url: httpx.URL | str,
    kwargs: dict[str, Any],
) -> _Request:
    headers = httpx.Headers(kwargs.pop("headers", None))
    for name, value in DEFAULT_HEADERS:
        headers.setdefault(name, value)
    return _Request(client, method, url, headers, kwargs)


@contextmanager
def connect_sse(
    client: httpx.Client, method: str, url: httpx.URL | str, **kwargs: Any
) -> Generator[EventSource, None, None]:
    """Open an event stream with ``client``; yield its :class:`EventSource`.

    In: what ``httpx.Client.stream`` takes (``params``, ``headers``, ``json``,
    ``content``, ``timeout``, ``auth``...), forwarded unchanged; ``Accept:
    text/event-stream`` and ``Cache-Control: no-store`` are added unless the
    headers name them. Raises httpx's errors if the request fails. Leaving
    the block closes the current response at once, even mid-stream.
    """
    request = _prepare(client, method, url, kwargs)
    sent, sending = request.build("")
    source = EventSource(client.send(sent, stream=True, **sending), _request=request)
    try:
        yield source
    finally:
        source.response.close()


@asynccontextmanager
async def aconnect_sse(
    client: httpx.AsyncClient, method: str, url: httpx.URL | str, **kwargs: Any
) -> AsyncIterator[EventSource]:
    """Async twin of :func:`connect_sse` for an ``httpx.AsyncClient``."""
    request = _prepare(client, method, url, kwargs)
    sent, sending = request.build("")
    source = EventSource(await client.send(sent, stream=True, **sending), _request=request)
    try:
        yield source
    finally:
        await source.response.aclose()
