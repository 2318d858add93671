"""Server-sent events over httpx: a drop-in for httpx-sse, decoded by :class:`ssekit.Decoder`.

Switching from httpx-sse is an import change::

    from ssekit.httpx import aconnect_sse, connect_sse

``connect_sse(client, method, url, **kwargs)`` and ``aconnect_sse`` take what
``httpx.Client.stream`` takes and yield an :class:`EventSource`, whose
``iter_sse()`` / ``aiter_sse()`` yield :class:`ssekit.Event`. What differs
from httpx-sse is where it departs from the WHATWG spec, and that a response
that is not an event stream raises :class:`ssekit.ResponseError` instead of
yielding nothing. Reconnection is opt-in and follows the same sans-IO policy
as :mod:`ssekit.client`: ``connect_sse(..., reconnect=RetryPolicy())`` retries
the first request too; ``iter_sse(reconnect=RetryPolicy())`` only what follows it.

Only this module imports httpx (extra ``ssekit[httpx]``); ``import ssekit`` does not.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Generator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, cast

import anyio
import httpx

from ._decoder import Decoder
from ._event import Event
from .client._policy import (
    CREDENTIAL_HEADERS,
    MAX_ERROR_BODY,
    Decision,
    Reconnector,
    RetryPolicy,
    Verdict,
    credential_names,
    judge_response,
    same_origin,
)

__all__ = (
    "CREDENTIAL_HEADERS",
    "AsyncClientLike",
    "ClientLike",
    "EventSource",
    "RetryPolicy",
    "aconnect_sse",
    "connect_sse",
)

#: What ``connect_sse`` sends unless the caller's headers already name it.
DEFAULT_HEADERS = (("Accept", "text/event-stream"), ("Cache-Control", "no-store"))


# Duck-typed clients (Starlette's TestClient is an httpx2 client): the types ask
# for what is used, so mypy accepts them as it accepts httpx.Client, and still
# tells a sync client from an async one (close() against aclose()).
class ClientLike(Protocol):
    """A sync client for :func:`connect_sse`: ``httpx.Client`` or a look-alike."""

    def build_request(self, *args: Any, **kwargs: Any) -> Any: ...

    def send(self, *args: Any, **kwargs: Any) -> Any: ...

    def close(self) -> None: ...


class AsyncClientLike(Protocol):
    """An async client for :func:`aconnect_sse`: ``httpx.AsyncClient`` or a look-alike."""

    def build_request(self, *args: Any, **kwargs: Any) -> Any: ...

    async def send(self, *args: Any, **kwargs: Any) -> Any: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _Request:
    """How to open the stream again: what ``connect_sse`` was given."""

    client: ClientLike | AsyncClientLike
    method: str
    url: httpx.URL | str
    headers: httpx.Headers
    options: dict[str, Any]  # httpx.Client.stream's keyword arguments, forwarded unchanged
    credentials: frozenset[str]  # header names a cross-origin redirect drops, lower case

    def build(self, last_event_id: str) -> tuple[httpx.Request, dict[str, Any], bool]:
        """The request to send (Last-Event-ID when set), the options ``send`` takes, and
        whether to follow redirects (the caller's ``follow_redirects``, else the client's)."""
        headers = self.headers.copy()
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        options = dict(self.options)
        sending: dict[str, Any] = {}
        if "auth" in options:
            sending["auth"] = options.pop("auth")
        follow = options.pop("follow_redirects", None)
        if follow is None:
            follow = getattr(self.client, "follow_redirects", False)
        request = self.client.build_request(self.method, self.url, headers=headers, **options)
        return request, sending, bool(follow)

    # httpx does not follow redirects itself here (follow_redirects=False): each
    # response's next_request is then httpx's own next hop (method, body, Host,
    # cookies), whose headers _redirect_headers corrects before it goes out. The
    # hops go without auth=, as in httpx's own redirects.
    def send(self, last_event_id: str) -> httpx.Response:
        """Send the request (streaming) with a ``httpx.Client``, following redirects."""
        request, sending, follow = self.build(last_event_id)
        client = cast(httpx.Client, self.client)
        response = client.send(request, stream=True, follow_redirects=False, **sending)
        history: list[httpx.Response] = []
        while follow and (hop := getattr(response, "next_request", None)) is not None:
            response.close()
            self._follow(response, hop, history)
            response = client.send(hop, stream=True, follow_redirects=False, auth=None)
        if history:
            response.history = history
        return response

    async def asend(self, last_event_id: str) -> httpx.Response:
        """Send the request (streaming) with a ``httpx.AsyncClient``, following redirects."""
        request, sending, follow = self.build(last_event_id)
        client = cast(httpx.AsyncClient, self.client)
        response = await client.send(request, stream=True, follow_redirects=False, **sending)
        history: list[httpx.Response] = []
        while follow and (hop := getattr(response, "next_request", None)) is not None:
            await response.aclose()
            self._follow(response, hop, history)
            response = await client.send(hop, stream=True, follow_redirects=False, auth=None)
        if history:
            response.history = history
        return response

    def _follow(
        self, response: httpx.Response, hop: httpx.Request, history: list[httpx.Response]
    ) -> None:
        """Ready ``hop``, the redirect ``response`` (closed) asks for; keep it in ``history``.

        Raises ``httpx.TooManyRedirects`` past the client's ``max_redirects``, as httpx does.
        """
        history.append(response)
        if len(history) > getattr(self.client, "max_redirects", 20):
            raise httpx.TooManyRedirects("Exceeded maximum allowed redirects.", request=hop)
        _redirect_headers(response.request, hop, self.credentials)


def _redirect_headers(sent: httpx.Request, hop: httpx.Request, credentials: frozenset[str]) -> None:
    """Credentials go no further than their origin (fetch's rule for Authorization).

    To another origin (scheme, host or port), ``hop`` loses every header in
    ``credentials``, whatever httpx kept (it drops Authorization only). Within
    the origin it keeps those ``sent`` carried (httpx drops a Cookie header on
    every redirect, to rebuild it from the client's cookie jar; a jar's own
    cookies for the URL win).
    """
    origin = (sent.url.scheme, sent.url.host, sent.url.port)
    if same_origin(origin, (hop.url.scheme, hop.url.host, hop.url.port)):
        for name in credentials:
            if name in sent.headers and name not in hop.headers:
                hop.headers[name] = sent.headers[name]
    else:
        for name in credentials:
            if name in hop.headers:
                del hop.headers[name]


class EventSource:
    """One event stream over httpx: ``response``, ``iter_sse()`` and ``aiter_sse()``.

    Built by :func:`connect_sse` / :func:`aconnect_sse` (which can reconnect),
    or by hand around a streaming ``httpx.Response`` (which cannot). The
    response is checked when iteration starts, so ``response`` can be looked
    at first, as with httpx-sse. After a reconnection ``response`` is the
    current connection's.
    """

    def __init__(
        self,
        response: httpx.Response,
        *,
        _request: _Request | None = None,
        _reconnector: Reconnector | None = None,
    ) -> None:
        self._response = response
        self._request = _request
        self._connected = _reconnector  # connect_sse's reconnect=, if given

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
        as they come without a policy. With ``reconnect`` here or given to
        :func:`connect_sse` (this one wins): a network error, a status in the
        policy's ``retry_statuses`` or the end of the body opens the stream
        again after the reconnection time (``retry:``), sending
        ``Last-Event-ID``; a POST (any method but GET) is not replayed unless
        ``RetryPolicy(replay_post=True)``; giving up raises
        :class:`ssekit.RetriesExhausted` (a POST: :class:`ssekit.ClientError`).
        The response of each connection is closed when it ends, and leaving
        :func:`connect_sse`'s block closes the current one.
        """
        reconnector, retrying = self._reconnector(reconnect)
        response: httpx.Response | None = self._response
        while True:
            error: Exception | None = None
            try:
                if response is None:
                    assert self._request is not None
                    response = self._response = self._request.send(reconnector.last_event_id)
                decision = _judge(response, response.iter_bytes(), reconnector)
                if decision.verdict is Verdict.STOP:
                    return
                if decision.verdict is Verdict.RECONNECT:
                    error = decision.error
                else:
                    decoder = Decoder(last_event_id=reconnector.last_event_id)
                    for chunk in response.iter_bytes():
                        events = decoder.feed(chunk)
                        reconnector.on_chunk(
                            decoder.last_event_id, decoder.retry, events=len(events)
                        )
                        yield from events
                    decoder.close()
            except httpx.TransportError as exc:
                if not retrying:
                    raise
                error = exc
            finally:
                if response is not None:
                    response.close()
            if not retrying:
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
        reconnector, retrying = self._reconnector(reconnect)
        response: httpx.Response | None = self._response
        while True:
            error: Exception | None = None
            try:
                if response is None:
                    assert self._request is not None
                    response = self._response = await self._request.asend(reconnector.last_event_id)
                decision = await _ajudge(response, response.aiter_bytes(), reconnector)
                if decision.verdict is Verdict.STOP:
                    return
                if decision.verdict is Verdict.RECONNECT:
                    error = decision.error
                else:
                    decoder = Decoder(last_event_id=reconnector.last_event_id)
                    async for chunk in response.aiter_bytes():
                        events = decoder.feed(chunk)
                        reconnector.on_chunk(
                            decoder.last_event_id, decoder.retry, events=len(events)
                        )
                        for event in events:
                            yield event
                    decoder.close()
            except httpx.TransportError as exc:
                if not retrying:
                    raise
                error = exc
            finally:
                if response is not None:
                    await response.aclose()
            if not retrying:
                return
            delay = _next_delay(reconnector, error)
            if delay is None:
                return
            await anyio.sleep(delay)
            response = None

    def _reconnector(self, policy: RetryPolicy | None) -> tuple[Reconnector, bool]:
        """The state to follow (``policy``'s, else connect_sse's); whether to reconnect."""
        if policy is None:
            if self._connected is not None:
                return self._connected, True
            return Reconnector(RetryPolicy()), False  # judges responses, keeps the last ID
        if self._request is None:
            raise TypeError(
                "reconnect= needs an EventSource from connect_sse or aconnect_sse, "
                "which know how to send the request again"
            )
        method = self._response.request.method
        return Reconnector(policy, method=method, now=time.monotonic()), True


def _judge(response: httpx.Response, body: Iterator[bytes], reconnector: Reconnector) -> Decision:
    """Judge the response head; raise a refusal's ResponseError, with the body's start.

    A status the policy retries is RECONNECT, carrying that ResponseError.
    """
    content_type = response.headers.get("content-type", "")
    decision = reconnector.on_response(response.status_code, content_type)
    if decision.verdict is Verdict.FAIL or decision.verdict is Verdict.RECONNECT:
        start = bytearray()
        for chunk in body:
            start += chunk
            if len(start) >= MAX_ERROR_BODY:
                break
        return _refusal(decision, response.status_code, content_type, start)
    return decision


async def _ajudge(
    response: httpx.Response, body: AsyncIterator[bytes], reconnector: Reconnector
) -> Decision:
    """Async twin of :func:`_judge`."""
    content_type = response.headers.get("content-type", "")
    decision = reconnector.on_response(response.status_code, content_type)
    if decision.verdict is Verdict.FAIL or decision.verdict is Verdict.RECONNECT:
        start = bytearray()
        async for chunk in body:
            start += chunk
            if len(start) >= MAX_ERROR_BODY:
                break
        return _refusal(decision, response.status_code, content_type, start)
    return decision


def _refusal(decision: Decision, status: int, content_type: str, body: bytearray) -> Decision:
    """Raise the refusal (FAIL) or return RECONNECT, its error carrying the body's start."""
    text = bytes(body[:MAX_ERROR_BODY]).decode("utf-8", "replace")
    error = judge_response(status, content_type, text).error
    assert error is not None
    if decision.verdict is Verdict.FAIL:
        raise error
    return Decision(Verdict.RECONNECT, error=error)


def _next_delay(reconnector: Reconnector, error: Exception | None) -> float | None:
    """Seconds to wait before reconnecting, None to stop; raises the policy's error on giving up."""
    decision = reconnector.on_end(now=time.monotonic(), random=random.random(), error=error)
    if decision.verdict is Verdict.FAIL:
        assert decision.error is not None
        raise decision.error
    if decision.verdict is Verdict.STOP:
        return None
    return decision.delay


def _prepare(
    client: ClientLike | AsyncClientLike,
    method: str,
    url: httpx.URL | str,
    credential_headers: Collection[str],
    kwargs: dict[str, Any],
) -> _Request:
    headers = httpx.Headers(kwargs.pop("headers", None))
    for name, value in DEFAULT_HEADERS:
        headers.setdefault(name, value)
    return _Request(client, method, url, headers, kwargs, credential_names(credential_headers))


@contextmanager
def connect_sse(
    client: ClientLike,
    method: str,
    url: httpx.URL | str,
    *,
    reconnect: RetryPolicy | None = None,
    credential_headers: Collection[str] = (),
    **kwargs: Any,
) -> Generator[EventSource, None, None]:
    """Open an event stream with ``client``; yield its :class:`EventSource`.

    In: what ``httpx.Client.stream`` takes (``params``, ``headers``, ``json``,
    ``content``, ``timeout``, ``auth``...), forwarded unchanged; ``Accept:
    text/event-stream`` and ``Cache-Control: no-store`` are added unless the
    headers name them. Without ``reconnect``, raises httpx's errors if the
    request fails. With it, a network error or a status in its
    ``retry_statuses`` is retried under the policy (a POST only with
    ``replay_post``) until a response comes that is neither, raising the
    policy's error on giving up; ``iter_sse()`` then reconnects under the same
    policy and state. Other responses, refusals included, are judged when
    iteration starts, as without ``reconnect``. Leaving the block closes the
    current response at once, even mid-stream.

    Redirects are followed when ``follow_redirects`` (here, else the
    client's) says so, up to the client's ``max_redirects``, as httpx follows
    them, except for credentials: a redirect that leaves the origin (another
    scheme, host or port) drops ``Authorization``, ``Proxy-Authorization``,
    ``Cookie``, ``api-key``, ``x-api-key`` (:data:`CREDENTIAL_HEADERS`) and the
    names in ``credential_headers``, for that hop and the ones after it; one
    within the origin keeps them all (``Cookie`` too, which httpx drops).
    ``response.history`` holds the redirects, closed.
    """
    request = _prepare(client, method, url, credential_headers, kwargs)
    if reconnect is None:
        source = EventSource(request.send(""), _request=request)
    else:
        reconnector = Reconnector(reconnect, method=method, now=time.monotonic())
        source = EventSource(
            _first(request, reconnector), _request=request, _reconnector=reconnector
        )
    try:
        yield source
    finally:
        source.response.close()


@asynccontextmanager
async def aconnect_sse(
    client: AsyncClientLike,
    method: str,
    url: httpx.URL | str,
    *,
    reconnect: RetryPolicy | None = None,
    credential_headers: Collection[str] = (),
    **kwargs: Any,
) -> AsyncIterator[EventSource]:
    """Async twin of :func:`connect_sse` for an ``httpx.AsyncClient``: the same
    arguments, redirects and credential rules."""
    request = _prepare(client, method, url, credential_headers, kwargs)
    if reconnect is None:
        source = EventSource(await request.asend(""), _request=request)
    else:
        reconnector = Reconnector(reconnect, method=method, now=time.monotonic())
        first = await _afirst(request, reconnector)
        source = EventSource(first, _request=request, _reconnector=reconnector)
    try:
        yield source
    finally:
        await source.response.aclose()


def _first(request: _Request, reconnector: Reconnector) -> httpx.Response:
    """The first response that is not retried: network errors and retried statuses are."""
    while True:
        error: Exception | None
        try:
            response = request.send("")
        except httpx.TransportError as exc:
            error = exc
        else:
            if response.status_code not in reconnector.policy.retry_statuses:
                return response
            try:
                error = _judge(response, response.iter_bytes(), reconnector).error
            finally:
                response.close()
        time.sleep(_retry_delay(reconnector, error))


async def _afirst(request: _Request, reconnector: Reconnector) -> httpx.Response:
    """Async twin of :func:`_first`."""
    while True:
        error: Exception | None
        try:
            response = await request.asend("")
        except httpx.TransportError as exc:
            error = exc
        else:
            if response.status_code not in reconnector.policy.retry_statuses:
                return response
            try:
                error = (await _ajudge(response, response.aiter_bytes(), reconnector)).error
            finally:
                await response.aclose()
        await anyio.sleep(_retry_delay(reconnector, error))


def _retry_delay(reconnector: Reconnector, error: Exception | None) -> float:
    """Seconds before retrying after ``error``; raises the policy's error on giving up."""
    delay = _next_delay(reconnector, error)
    assert delay is not None  # the policy stops without an error only when a body ended
    return delay
