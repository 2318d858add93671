"""``ssekit mock-upstream --replay DIR|FILE``: answer requests from cassettes.

A request is matched to a cassette (:class:`ssekit.cassette.Library`: method, path
and body by default, JSON bodies compared as data) and answered with its status,
headers and body chunks, each written as one HTTP chunk when due (the recorded
pace, or ``--speed``), read from the file as it goes. A recording that did not end
complete, or ``--cut-after``, ends the connection without the last chunk, as the
stream was cut. No cassette: 404 with a JSON error naming the closest ones.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import anyio
import anyio.abc

from .._http import (
    BadRequest,
    ClientGone,
    Downstream,
    RequestHead,
    WireError,
    check_engine,
    close_now,
)
from ..cassette import CassetteError, Library, Pace, Playback
from ..replay import replay_headers

__all__ = ("ReplayConfig", "serve_replay")

log = logging.getLogger("ssekit.proxy")

MAX_BODY = 1 << 24


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayConfig:
    """Where the cassettes are, how they match and how they are played."""

    source: str
    listen_host: str = "127.0.0.1"
    listen_port: int = 9000
    match: tuple[str, ...] = ("method", "path", "body")
    pace: Pace = field(default_factory=Pace)
    http: str = "ssekit"


async def serve_replay(
    config: ReplayConfig,
    *,
    task_status: anyio.abc.TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve cassettes until cancelled; reports the bound ``(host, port)``."""
    check_engine(config.http)
    library = Library(config.source, config.match)
    listener = await anyio.create_tcp_listener(
        local_host=config.listen_host, local_port=config.listen_port
    )
    address = listener.extra(anyio.abc.SocketAttribute.local_address)
    async with listener, anyio.create_task_group() as tg:
        task_status.started((str(address[0]), int(address[1])))
        await listener.serve(lambda stream: _connection(stream, config, library), tg)


async def _connection(
    stream: anyio.abc.SocketStream, config: ReplayConfig, library: Library
) -> None:
    client = Downstream(stream, 64 * 1024, engine=config.http)
    try:
        while True:
            request = await client.next_event()
            if not isinstance(request, RequestHead):
                return
            started = time.monotonic()
            body = b""
            async for part in client.body():
                body += part
                if len(body) > MAX_BODY:
                    await client.answer(413, _error(413, "request body too large"), close=True)
                    return
            if not await answer(client, request, body, library, config.pace, started):
                return
            if not client.conn.reusable:
                return
            client.conn.start_next_cycle()
    except (ClientGone, BadRequest, WireError):
        return
    finally:
        await close_now(stream)


def _error(status: int, message: str, **more: object) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": "ssekit_replay", **more}}, ensure_ascii=False
    ).encode()


async def answer(
    client: Downstream,
    request: RequestHead,
    body: bytes,
    library: Library,
    pace: Pace,
    started: float,
) -> bool:
    """Answer one request from its cassette; False when the connection must close
    (the replayed stream was cut)."""
    method = request.method.decode("ascii", "replace")
    target = request.target.decode("ascii", "replace")
    try:
        cassette = library.find(method, target, body)
    except CassetteError as exc:
        await client.answer(500, _error(500, str(exc), file=exc.path, line=exc.line))
        return True
    if cassette is None:
        closest = library.closest(method, target, body)
        message = f"no cassette matches {method} {target} (matching {', '.join(library.match)})"
        await client.answer(404, _error(404, message, closest=closest))
        return True
    playback = Playback(cassette, pace)
    response = cassette.response
    headers = replay_headers(cassette)
    await _until(started + playback.head_due)
    await client.send_response(response.status, headers, response.reason.encode("latin-1"))
    try:
        for due, piece in playback:
            await _until(started + due)
            await client.send_data(piece)
    except CassetteError as exc:
        log.warning("ssekit: replay of %s cut: %s", cassette.name, exc)
        return False
    if not playback.clean:
        return False  # the connection closes without the last chunk: a cut stream
    await client.send_end()
    return True


async def _until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await anyio.sleep(delay)
