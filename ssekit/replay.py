"""Play recorded streams back in tests: chunk for chunk, at their recorded pace.

Cassettes come from ``ssekit proxy --record DIR`` (the format: :mod:`ssekit.cassette`)::

    from ssekit.replay import ReplayApp, ReplayTransport, load

    cassette = load("tests/cassettes/answer.jsonl")      # checked line by line
    client = httpx.Client(transport=ReplayTransport(cassette))   # sync and async
    app = ReplayApp("tests/cassettes")                   # ASGI, a directory matched

Both answer with the recorded status, headers and body chunks, each chunk when
it is due (``speed=None``: at once), optionally re-cut (``rechunk="1"`` or
``"random"``) or cut after some events (``cut_after``). A recording that did
not end complete ends as a cut stream: the transport raises
``httpx.RemoteProtocolError`` as httpx does for a live cut; the ASGI app returns
without finishing the response (servers close the connection without the last
chunk). Given a directory (or a path), a request is matched by ``match``
(method, path and body by default, JSON compared as data); none: a 404 JSON error
naming the closest cassettes.

:class:`ReplayTransport` needs httpx (``ssekit[httpx]``) and is imported only
when asked for; the rest needs anyio alone.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import anyio

from .cassette import DEFAULT_MATCH, Cassette, CassetteError, Library, Pace, Playback, load

if TYPE_CHECKING:
    from ._replay_httpx import ReplayTransport

__all__ = ("Cassette", "CassetteError", "Pace", "ReplayApp", "ReplayTransport", "load")

#: Response fields a replay does not copy: the connection's own (a body of unknown
#: length is framed anew; a Content-Length stays, so a cut sized body is short, as live).
FRAMING = frozenset({"transfer-encoding", "connection", "keep-alive"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


def __getattr__(name: str) -> Any:
    if name == "ReplayTransport":  # httpx only when the transport is asked for
        from ._replay_httpx import ReplayTransport

        return ReplayTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Source:
    """What answers a request: one cassette (every request), or a :class:`Library`."""

    def __init__(
        self, source: Cassette | str | os.PathLike[str], match: Sequence[str] = DEFAULT_MATCH
    ) -> None:
        self.cassette = source if isinstance(source, Cassette) else None
        self.library = None if isinstance(source, Cassette) else Library(source, match)

    def find(self, method: str, target: str, body: bytes) -> Cassette | None:
        if self.cassette is not None:
            return self.cassette
        assert self.library is not None
        return self.library.find(method, target, body)

    def not_found(self, method: str, target: str, body: bytes) -> bytes:
        """The 404 body: what was asked, what matching means, the closest cassettes."""
        assert self.library is not None
        error = {
            "message": f"no cassette matches {method} {target} "
            f"(matching {', '.join(self.library.match)})",
            "type": "ssekit_replay",
            "closest": self.library.closest(method, target, body),
        }
        return json.dumps({"error": error}, ensure_ascii=False).encode()


def replay_headers(cassette: Cassette) -> list[tuple[bytes, bytes]]:
    """The recorded response headers, framing fields left out."""
    return [
        (k.encode("latin-1"), v.encode("latin-1"))
        for k, v in cassette.response.headers
        if k.lower() not in FRAMING
    ]


class Replayer:
    """What every replayer holds: the cassettes (``source``: a directory, a file, or one
    loaded :class:`Cassette` answering every request, matched by ``match``) and the pace."""

    def __init__(
        self,
        source: Cassette | str | os.PathLike[str],
        *,
        speed: float | None = 1.0,
        rechunk: Literal["1", "random"] | None = None,
        cut_after: int | None = None,
        seed: int = 0,
        match: Sequence[str] = DEFAULT_MATCH,
    ) -> None:
        self.source = Source(source, match)
        self.pace = Pace(speed=speed, rechunk=rechunk, cut_after=cut_after, seed=seed)


class ReplayApp(Replayer):
    """An ASGI app answering every HTTP request from cassettes (``source``: a directory,
    a file, or one loaded :class:`Cassette` answering every request).

    Each body chunk is one ``http.response.body`` message, sent when due. Lifespan
    messages are answered. Raises :class:`CassetteError` (a 500 from the server)
    when a cassette is broken.
    """

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        started = time.monotonic()
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        method = scope["method"]
        text = target.decode("latin-1")
        cassette = self.source.find(method, text, body)
        if cassette is None:
            answer = self.source.not_found(method, text, body)
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 404, "headers": headers})
            await send({"type": "http.response.body", "body": answer})
            return
        playback = Playback(cassette, self.pace)
        await _until(started + playback.head_due)
        await send(
            {
                "type": "http.response.start",
                "status": cassette.response.status,
                "headers": replay_headers(cassette),
            }
        )
        for due, piece in playback:
            await _until(started + due)
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        if playback.clean:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        # else: returning with the body unfinished; the server cuts the connection


async def _until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await anyio.sleep(delay)
