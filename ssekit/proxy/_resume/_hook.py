"""Where resumption meets an exchange: the per-proxy :class:`Resume` and per-stream
:class:`Recording`, and the :class:`Detachable` client an exchange forwards to.

With the store off none of this exists (``Shared.resume`` is None) and the
exchange is exactly what it was. With it on, a client's own key is claimed
before anything goes upstream (409 while a stream under it is live or kept),
and a ``200 text/event-stream`` answer is recorded: its head waits for the
store to have the stream, then carries ``ssekit-stream-id`` (or, when the store
cannot keep it, ``ssekit-not-resumable`` and why); each event the tap decodes
goes to the store's writer (without waiting); and the original client leaving
no longer ends the exchange at once: :class:`Detachable` swallows its
departure and holds the exchange open while a reader is attached, or for
``--resume-grace`` with none, or until a DELETE. How a kept stream was cut
(``Cut``) is stored with it and logged.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Final

import anyio

from ..._event import Event
from ..._http import BadRequest, ClientGone, Downstream, RequestHead, get_header, is_event_stream
from .._config import ProxyConfig
from .._relay import bearer_token
from .._stats import Metrics, StreamStats
from ._records import (
    Cut,
    State,
    Unkept,
    event_body,
    grace_expired,
    new_stream_id,
    redacted,
    scoped_key,
    valid_key,
)
from ._store import Store, StoreUnavailable, Writer

__all__ = (
    "NOT_RESUMABLE_HEADER",
    "STREAM_ID_HEADER",
    "Detachable",
    "Recording",
    "Resume",
    "client_token",
)

log = logging.getLogger("ssekit.proxy")

STREAM_ID_HEADER = b"ssekit-stream-id"
RESUME_KEY_HEADER = b"ssekit-resume-key"
#: On an event stream the store is on for but could not keep: why (``Unkept``).
NOT_RESUMABLE_HEADER = b"ssekit-not-resumable"
#: The longest a response head waits for the store to have its stream (seconds); past it
#: the stream flows on without an id, not resumable.
KEPT_WITHIN: Final = 1.0


def client_token(headers: list[tuple[bytes, bytes]], config: ProxyConfig) -> str | None:
    """The client's proxy token when client tokens are on (it scopes stream keys), else None."""
    return bearer_token(headers) if config.client_tokens else None


class Resume:
    """One proxy's resumption: its store, its owner id, its counters."""

    def __init__(self, config: ProxyConfig, store: Store, metrics: Metrics) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        metrics.resume_on = True

    def health(self) -> dict[str, str]:
        """The store's state for the health endpoint: ``resume_store`` up or down (the
        proxy forwards either way; only resumption waits for the store)."""
        return {"resume_store": "up" if self.store.available else "down"}

    def describe(self) -> str:
        """The store and its state, for the start-up banner (no password)."""
        store = self.config.resume_store or ""
        if store == "memory":
            return "resume store: memory (this process)"
        where = f"resume store: {redacted(store)}"
        if self.store.available:
            return where
        return f"{where} (DOWN: streams are not resumable until it answers; see the log)"

    async def begin(self, request: RequestHead, stats: StreamStats) -> Recording:
        """At request time: the stream id (the client's ``ssekit-resume-key`` or a random
        one), claimed in the store so no other request takes it. A bad key raises
        :class:`BadRequest` 400, a key naming a live or kept stream 409: nothing goes
        upstream. A store that cannot answer leaves the stream unkept (it flows on)."""
        key = get_header(request.headers, RESUME_KEY_HEADER)
        token = client_token(list(request.headers), self.config)
        method = request.method.decode("ascii", "replace")
        run = secrets.token_hex(8)
        if key is None:  # 128 random bits: no other stream has it, nothing to claim
            stream_id = new_stream_id(secrets.token_bytes(16))
            return Recording(self, stream_id, scoped_key(stream_id, token), run, method, stats)
        text = key.decode("latin-1")
        if not valid_key(text):
            raise BadRequest(
                400,
                f"ssekit-resume-key {text[:40]!r} is not 1 to 128 characters of "
                "A-Z a-z 0-9 . _ ~ -",
            )
        recording = Recording(self, text, scoped_key(text, token), run, method, stats)
        try:
            recording.claimed = await self.store.claim(recording.key, run)
        except StoreUnavailable:
            recording.unkept = Unkept.STORE_DOWN  # not resumable; the stream flows on
            return recording
        if not recording.claimed:
            raise BadRequest(
                409,
                f"ssekit-resume-key {text!r} is in use: it names a stream that is live or "
                "still kept (--resume-ttl). Send a new key, or DELETE the stream first",
            )
        return recording


class Recording:
    """One exchange's stream as it is recorded (armed once its head shows an event stream)."""

    __slots__ = (
        "claimed",
        "client",
        "key",
        "method",
        "resume",
        "run",
        "stats",
        "stream_id",
        "unkept",
        "writer",
    )

    def __init__(
        self, resume: Resume, stream_id: str, key: str, run: str, method: str, stats: StreamStats
    ) -> None:
        self.resume = resume
        self.stats = stats
        self.stream_id = stream_id
        self.key = key
        self.run = run
        self.method = method
        self.claimed = False  # the key is reserved for this exchange (a client's own key)
        self.unkept: Unkept | None = None  # the store could not take the stream: why
        self.writer: Writer | None = None
        self.client: Detachable | None = None

    @staticmethod
    def strip(upstream_headers: list[tuple[bytes, bytes]]) -> None:
        """Take ``ssekit-resume-key`` off what goes upstream: it is the proxy's."""
        upstream_headers[:] = [h for h in upstream_headers if h[0] != RESUME_KEY_HEADER]

    async def close(self) -> None:
        """The exchange is over: a key claimed for an answer that was not kept is free
        again (at once, even when the exchange was cancelled)."""
        if self.claimed and self.writer is None:
            self.claimed = False
            with anyio.CancelScope(shield=True), anyio.move_on_after(KEPT_WITHIN):
                await self.resume.store.release(self.key, self.run)

    def wrap(self, client: Downstream) -> Downstream:
        """The client the exchange forwards to from now on."""
        self.client = Detachable(client, self)
        return self.client

    async def arm(
        self, status: int, content_type: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """At the response head: record a ``200 text/event-stream`` answer (not to HEAD),
        adding ``ssekit-stream-id`` to the head; anything else is not kept.

        The head waits until the store has the stream (one round trip to Redis, at
        most ``KEPT_WITHIN``): an id handed out resolves on every instance at once.
        """
        if status != 200 or self.method == "HEAD" or not is_event_stream(content_type):
            return
        writer = None if self.unkept else self.resume.store.open(self.key, self.run)
        if writer is not None:
            with anyio.move_on_after(KEPT_WITHIN):
                await writer.kept()
            if not writer.stored or not writer.resumable:
                writer.give_up(f"the store did not take the stream within {KEPT_WITHIN:g}s")
                writer.end(State.CUT)
                self.unkept = self.unkept or Unkept.STORE_SLOW
                writer = None
        if writer is None:
            # This stream flows on, not resumable: say so, and why (the log line too).
            down = not self.resume.store.available
            why = Unkept.STORE_DOWN if down else self.unkept or Unkept.STORE_SLOW
            self.stats.not_resumable = why.value
            headers.append((NOT_RESUMABLE_HEADER, why.value.encode()))
            return
        self.writer = writer
        self.resume.metrics.resume_recorded += 1
        self.stats.stream_id = self.stream_id
        headers.append((STREAM_ID_HEADER, self.stream_id.encode()))
        if self.client is not None:
            self.client.armed.set()

    # The tap's side (on the hot path: nothing here waits).
    def event(self, event: Event) -> None:
        writer = self.writer
        if writer is not None and writer.resumable:
            writer.append(event_body(event))
            if not writer.resumable:
                self._gave_up(writer)

    def fail(self) -> None:
        """The tap lost track of event boundaries: what follows cannot be stored."""
        writer = self.writer
        if writer is not None and writer.resumable:
            writer.give_up("an event passed the decoder's bound")
            self._gave_up(writer)

    def _gave_up(self, writer: Writer) -> None:
        self.resume.metrics.resume_given_up += 1
        log.warning(
            "ssekit: stream %s is no longer resumable: %s (it goes on for the client "
            "attached; counted in ssekit_resume_given_up_total)",
            self.stream_id,
            writer.reason,
        )

    def end(self, done: bool, *, shutdown: bool = False) -> None:
        """The exchange is over: the stream ended cleanly, or was cut (by a DELETE, the
        grace running out, the proxy shutting down, else the upstream failing)."""
        writer = self.writer
        if writer is None:
            return
        if done:
            writer.end(State.DONE)
            return
        if writer.cancelled:
            cut = Cut.DELETED
        elif self.client is not None and self.client.expired:
            cut = Cut.GRACE
        elif shutdown:
            cut = Cut.OWNER_GONE
        else:
            cut = Cut.UPSTREAM
        writer.end(State.CUT, cut)
        if writer.resumable:
            self.stats.cut = (writer.cut or cut).value


class Detachable(Downstream):
    """The original client, which may leave while its stream is being recorded.

    Before the stream is armed, and once it is not resumable, it is the plain
    client. Armed and resumable: a failed write is swallowed (the bytes are
    recorded; a reader may come for them), and the watcher's read does not
    report the end of the connection until the stream may be let go: no reader
    attached for ``--resume-grace``, or not resumable any more. A DELETE ends
    that read at once, even with the client still there, so the exchange
    closes its upstream exactly as for a client leaving.
    """

    __slots__ = ("armed", "expired", "gone", "recording")

    def __init__(self, client: Downstream, recording: Recording) -> None:
        # Share the real connection's socket and HTTP state; only the two methods differ.
        self.stream = client.stream
        self.conn = client.conn
        self.addr = client.addr
        self.last_write = client.last_write
        self.send_timeout = client.send_timeout
        self.stalled = False
        self.recording = recording
        self.armed = anyio.Event()
        self.gone = False
        self.expired = False  # the grace ran out with no reader: the upstream is let go

    def _keeps(self) -> bool:
        writer = self.recording.writer
        return writer is not None and writer.resumable and writer.state is State.LIVE

    async def send_raw(self, data: bytes) -> None:
        if self.gone:
            return
        try:
            await super().send_raw(data)
        except ClientGone:
            if not self._keeps():
                raise
            self.gone = self.recording.stats.detached = True

    async def receive(self, limit: float | None = None) -> bytes:
        data = b""
        async with anyio.create_task_group() as tg:

            async def from_client() -> None:
                nonlocal data
                try:
                    data = await super(Detachable, self).receive(limit)
                except ClientGone:
                    data = b""
                if not data and self._keeps():
                    self.gone = self.recording.stats.detached = True
                    await self._hold()
                tg.cancel_scope.cancel()

            async def stop_button() -> None:
                await self.armed.wait()
                writer = self.recording.writer
                assert writer is not None
                while not writer.cancelled:
                    await writer.control_changed()
                tg.cancel_scope.cancel()

            tg.start_soon(from_client)
            tg.start_soon(stop_button)
        return data

    async def _hold(self) -> None:
        """Keep the upstream going while a reader is attached, else for the grace period."""
        writer = self.recording.writer
        assert writer is not None
        grace = self.recording.resume.config.resume_grace
        since: float | None = None
        while self._keeps() and not writer.cancelled:
            if writer.attached:
                since = None
                await writer.control_changed()
                continue
            now = time.monotonic()
            since = now if since is None else since
            if grace_expired(now=now, unattached_since=since, grace=grace):
                self.expired = True
                return
            with anyio.move_on_after(since + grace - now):
                await writer.control_changed()
