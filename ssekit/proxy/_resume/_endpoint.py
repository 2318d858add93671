"""``GET`` and ``DELETE {admin prefix}/streams/<id>``: read a stored stream, or stop it.

The decisions (which status, from which position, whether to look again for a
position the store has not caught up with) are :func:`plan_resume`'s; this
moves the bytes: the replay and the live tail in pieces of about ``PIECE``
bytes, each written before the next is read, each event framed with
``id: <position>``, ended cleanly only after a clean upstream end, cut
otherwise (with ``--error-event``, an ``event: error`` first; the log line's
``cut`` says which). A store that does not answer is a 503 that names neither
its address nor its error (the store logs those).
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Final

import anyio

from ..._encoder import encode
from ..._event import Event
from ..._http import ClientGone, Downstream, RequestHead, error_body, get_header
from .._config import token_matches
from .._relay import Input, Relay
from .._stats import StreamStats
from ._hook import STREAM_ID_HEADER, Resume, client_token
from ._records import (
    CATCH_UP,
    CatchUp,
    Cut,
    End,
    Refusal,
    Replay,
    State,
    StreamInfo,
    pieces,
    plan_resume,
    scoped_key,
    valid_key,
)
from ._store import StoreUnavailable

__all__ = ("serve_streams",)


async def serve_streams(
    resume: Resume, client: Downstream, request: RequestHead, relay: Relay, stats: StreamStats
) -> bool:
    """Answer one request to the streams endpoint; True when the connection may go on."""
    config = resume.config
    target = request.target.decode("ascii", "replace")
    stream_id = target.split("?", 1)[0][len(config.admin_prefix) + len("/streams/") :]
    headers = list(request.headers)
    token = client_token(headers, config)
    if token is not None and not token_matches(token, config.client_tokens):
        return await _refuse(
            client,
            relay,
            stats,
            Refusal(401, "streams need the proxy token: send Authorization: Bearer <token>"),
            Input.UNAUTHORIZED,
        )
    if stats.method not in ("GET", "DELETE"):
        return await _refuse(
            client,
            relay,
            stats,
            Refusal(405, f"no {stats.method} here: GET reads a stream, DELETE stops it"),
        )
    if not valid_key(stream_id):
        return await _refuse(client, relay, stats, Refusal(404, f"no stream {stream_id[:40]!r}"))
    key = scoped_key(stream_id, token)
    try:
        if stats.method == "DELETE":
            if not await resume.store.cancel(key):
                return await _refuse(client, relay, stats, Refusal(404, f"no stream {stream_id!r}"))
            stats.status = 204
            await client.send_response(204, [(b"via", b"1.1 ssekit")])
            await client.send_end()
            relay.on(Input.LOCAL)
            return True
        plan, info = await _plan(
            resume, key, stream_id, get_header(headers, b"last-event-id"), target
        )
    except StoreUnavailable:  # its address and error are in the store's log, not here
        return await _refuse(client, relay, stats, UNAVAILABLE)
    if isinstance(plan, Refusal):
        return await _refuse(client, relay, stats, plan)
    assert info is not None
    resume.metrics.resume_reads += 1
    stats.status = 200
    await client.send_response(
        200,
        [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            (b"via", b"1.1 ssekit"),
            (STREAM_ID_HEADER, stream_id.encode()),
        ],
    )
    relay.on(Input.HEAD)
    end = End(State.CUT, Cut.NOT_KEPT)
    error = ""
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch, client, tg.cancel_scope, relay, config.max_header_size)
            try:
                async with contextlib.aclosing(resume.store.read(info, plan.after)) as batches:
                    async for batch in batches:
                        if isinstance(batch, End):
                            end = batch
                            break
                        # In pieces, each written (and waited for) before the next is
                        # made: a reader that takes nothing holds one, not the backlog.
                        for piece in pieces(batch):
                            await client.send_data(piece)
                            stats.body_bytes += len(piece)
                        stats.events += len(batch)
            except StoreUnavailable:  # logged by the store (its address, its error)
                error = "the resume store is unavailable: the stream was cut; try again shortly"
            tg.cancel_scope.cancel()
    except* ClientGone:
        if relay.open:
            relay.on(Input.CLIENT_GONE)
    if not relay.open:
        return False
    if end.state is State.DONE:
        await client.send_end()
        relay.on(Input.END)
        return True
    # Cut: the reader must be able to tell (no last chunk), as on the original response.
    cut = end.cut or Cut.UPSTREAM
    stats.cut = cut.value
    stats.error = error or f"the stream was cut: {CUT_SAID[cut]}"
    relay.on(Input.UPSTREAM_FAILED)
    if config.error_event:
        message = json.dumps({"error": {"message": stats.error, "type": "proxy_error"}})
        with contextlib.suppress(ClientGone):
            await client.send_data(encode(Event(event="error", data=message)))
    return False


#: What a reader is told of a store that does not answer: never its address or its error.
UNAVAILABLE: Final = Refusal(503, "the resume store is unavailable; try again shortly")

#: Each cut, as the reader's error (and --error-event) says it.
CUT_SAID: Final = {
    Cut.UPSTREAM: "the upstream failed",
    Cut.GRACE: "no reader came back within --resume-grace",
    Cut.DELETED: "it was stopped (DELETE)",
    Cut.OWNER_GONE: "the instance forwarding it went away",
    Cut.NOT_KEPT: "the store no longer keeps it",
}


async def _plan(
    resume: Resume, key: str, stream_id: str, last_id: bytes | None, target: str
) -> tuple[Replay | Refusal, StreamInfo | None]:
    """Look the stream up and decide; while it is live and the position asked for is not
    in the store yet, look again, for up to ``CATCH_UP`` seconds (the client may have been
    sent events the store does not have yet)."""
    store = resume.store
    give_up = time.monotonic() + CATCH_UP
    pause = 0.01
    while True:
        info = await store.lookup(key)
        patient = time.monotonic() < give_up
        plan = plan_resume(info, stream_id, last_id, target, store.now(), patient=patient)
        if not isinstance(plan, CatchUp):
            return plan, info
        await anyio.sleep(pause)
        pause = min(pause * 2, 0.2)


async def _refuse(
    client: Downstream,
    relay: Relay,
    stats: StreamStats,
    refusal: Refusal,
    why: Input = Input.LOCAL,
) -> bool:
    relay.on(why)
    stats.status = refusal.status
    stats.error = refusal.message
    await client.answer(refusal.status, error_body(refusal.status, refusal.message))
    return True


async def _watch(client: Downstream, scope: anyio.CancelScope, relay: Relay, max_held: int) -> None:
    """Notice the reader leaving (EOF or reset) while it waits for the live tail."""
    await client.wait_gone(max_held)
    if relay.open:
        relay.on(Input.CLIENT_GONE)
    scope.cancel()
