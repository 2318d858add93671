"""The httpx side of :mod:`ssekit.replay` (imported only when asked for: it needs httpx)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx

from .cassette import Playback
from .replay import Replayer, replay_headers

__all__ = ("ReplayTransport",)

#: What httpx itself says when a peer closes the connection inside a body.
CUT = "peer closed connection without sending complete message body (the recorded stream was cut)"


class ReplayTransport(Replayer, httpx.BaseTransport, httpx.AsyncBaseTransport):
    """An httpx transport, sync and async, answering from cassettes.

    ``source``: one loaded :class:`Cassette` (answers every request), a cassette
    file or a directory (requests matched by ``match``; none: a 404 JSON error
    naming the closest). The response returns when its head is due; each body
    chunk is one piece of ``iter_raw()``, yielded when due (``speed=None``: at once).
    A recording that was cut raises ``httpx.RemoteProtocolError`` at its end, as a
    live cut does.
    """

    def _find(self, request: httpx.Request) -> tuple[Playback | None, httpx.Response | None]:
        method = request.method
        target = request.url.raw_path.decode("ascii")
        body = request.content
        cassette = self.source.find(method, target, body)
        if cassette is None:
            answer = self.source.not_found(method, target, body)
            headers = {"content-type": "application/json"}
            return None, httpx.Response(404, headers=headers, content=answer, request=request)
        return Playback(cassette, self.pace), None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = time.monotonic()
        request.read()
        playback, missing = self._find(request)
        if playback is None:
            assert missing is not None
            return missing
        time.sleep(max(0.0, started + playback.head_due - time.monotonic()))
        return self._response(request, playback, _SyncBody(playback, started))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = time.monotonic()
        await request.aread()
        playback, missing = self._find(request)
        if playback is None:
            assert missing is not None
            return missing
        await anyio.sleep(max(0.0, started + playback.head_due - time.monotonic()))
        return self._response(request, playback, _AsyncBody(playback, started))

    @staticmethod
    def _response(
        request: httpx.Request,
        playback: Playback,
        stream: httpx.SyncByteStream | httpx.AsyncByteStream,
    ) -> httpx.Response:
        response = playback.cassette.response
        return httpx.Response(
            response.status,
            headers=replay_headers(playback.cassette),
            stream=stream,
            request=request,
            extensions={"reason_phrase": response.reason.encode("latin-1")},
        )


class _SyncBody(httpx.SyncByteStream):
    def __init__(self, playback: Playback, started: float) -> None:
        self._playback = playback
        self._started = started

    def __iter__(self) -> Iterator[bytes]:
        for due, piece in self._playback:
            time.sleep(max(0.0, self._started + due - time.monotonic()))
            yield piece
        if not self._playback.clean:
            raise httpx.RemoteProtocolError(CUT)


class _AsyncBody(httpx.AsyncByteStream):
    def __init__(self, playback: Playback, started: float) -> None:
        self._playback = playback
        self._started = started

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for due, piece in self._playback:
            await anyio.sleep(max(0.0, self._started + due - time.monotonic()))
            yield piece
        if not self._playback.clean:
            raise httpx.RemoteProtocolError(CUT)
