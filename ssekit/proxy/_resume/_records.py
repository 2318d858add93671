"""Pure rules of resumable streams: ids, positions, states, and what a resume request gets.

No I/O, clocks or randomness here: time and random bytes come in as arguments.
A stored stream is a run of events numbered 1, 2, 3... (positions), a state
(live, done, cut), an owner, and an expiry once it ended. A resume request
names the stream and the last position it saw (``Last-Event-ID`` or
``?last_event_id=``) and gets every event after it, each framed with
``id: <position>``, then the live tail, then a clean end only after a clean
upstream end.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qs, urlsplit, urlunsplit

from ..._encoder import encode
from ..._event import Event

__all__ = (
    "CATCH_UP",
    "KEY_PATTERN",
    "MAX_DIGITS",
    "PIECE",
    "PROBE_FIRST",
    "PROBE_MAX",
    "STEADY",
    "Asked",
    "CatchUp",
    "Cut",
    "End",
    "Outage",
    "Refusal",
    "Replay",
    "State",
    "StreamInfo",
    "Unkept",
    "asked_position",
    "event_body",
    "frame",
    "grace_expired",
    "new_stream_id",
    "owner_lost",
    "pieces",
    "plan_resume",
    "redacted",
    "scoped_key",
    "start_position",
    "valid_key",
)

#: Bytes of the replay written at a time (a stored read yields about this much at most):
#: a reader that takes nothing holds one piece, never the backlog.
PIECE: Final = 16 * 1024

#: A client's own stream key (``ssekit-resume-key``) and every stream id: 1 to 128
#: characters of RFC 3986's unreserved set, so it sits in a URL path unescaped.
KEY_PATTERN: Final = re.compile(r"[A-Za-z0-9._~-]{1,128}")


class State(enum.Enum):
    """Where a stored stream is: still being written, ended cleanly, or cut."""

    LIVE = "live"
    DONE = "done"
    CUT = "cut"


class Cut(enum.Enum):
    """Why a stored stream was cut: the ``cut`` field of the log lines that serve it."""

    UPSTREAM = "upstream_failure"  # the upstream failed, timed out, or cut its answer
    GRACE = "grace_expired"  # no reader came back within --resume-grace
    DELETED = "deleted"  # DELETE .../streams/<id>
    OWNER_GONE = "owner_gone"  # the instance forwarding it died or shut down
    NOT_KEPT = "not_kept"  # the store let it go: --resume-max-bytes, full, failed, evicted


class Unkept(enum.Enum):
    """Why an event stream is not resumable from its head on, though the store is on: the
    ``ssekit-not-resumable`` response header and the ``not_resumable`` log field."""

    STORE_DOWN = "store-unavailable"  # the store does not answer (logged once, 503 to readers)
    STORE_SLOW = "store-too-slow"  # it did not take the stream in time


@dataclass(frozen=True, slots=True)
class End:
    """How a read of a stored stream ends: DONE, or CUT and why (``cut``)."""

    state: State
    cut: Cut | None = None


#: After a store error the store is probed after PROBE_FIRST seconds, the wait doubling
#: with each failure up to PROBE_MAX: a store in trouble is not hammered, and a store that
#: fails and recovers in turn (Redis at maxmemory) is tried less and less often.
PROBE_FIRST: Final = 1.0
PROBE_MAX: Final = 10.0
#: An outage ends once the store has answered this long (seconds): failures within it are
#: the same outage (logged once at its start, once at its end, never per flap).
STEADY: Final = 5.0


class Outage:
    """A store's health as its errors and answers show it; time comes in as ``now``.

    Up until an operation fails; then down (new streams are not kept) and probed
    with backoff (:meth:`probe_due`); a probe that answers brings it up again
    (:meth:`answered`), and :meth:`over` says once when it has held ``STEADY``
    seconds. :meth:`failed` says whether a failure began an outage. So one outage
    is two log lines, however often the store flapped within it.
    """

    __slots__ = ("back_at", "failures", "probe_at", "since", "up")

    def __init__(self) -> None:
        self.up = True
        self.since: float | None = None  # when the current outage began; None: none
        self.failures = 0  # in the current outage
        self.probe_at = 0.0
        self.back_at: float | None = None  # when the store answered again

    def failed(self, now: float) -> bool:
        """An operation failed: down, next probe later; True when an outage begins."""
        began = self.since is None
        if began:
            self.since = now
        self.up = False
        self.back_at = None
        self.failures += 1
        self.probe_at = now + min(PROBE_MAX, PROBE_FIRST * 2.0 ** min(self.failures - 1, 16))
        return began

    def probe_due(self, now: float) -> bool:
        """Down, and the backoff since the last failure has passed."""
        return not self.up and now >= self.probe_at

    def answered(self, now: float) -> None:
        """A probe succeeded: up again (the outage is over once it holds, see :meth:`over`)."""
        if not self.up:
            self.up = True
            self.back_at = now

    def over(self, now: float) -> bool:
        """True once, when the store has answered ``STEADY`` seconds after an outage."""
        if self.up and self.back_at is not None and now - self.back_at >= STEADY:
            self.since = self.back_at = None
            self.failures = 0
            return True
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamInfo:
    """What a store knows of one stream, read at one moment.

    ``count`` is the number of events stored (the last position); ``expires``
    is when an ended stream stops being replayable, on the store's clock
    (None while live); ``resumable`` is False once the stream passed
    ``--resume-max-bytes`` or its store writes failed: it is then never served.
    """

    key: str
    run: str
    state: State
    count: int
    owner: str
    resumable: bool = True
    expires: float | None = None


@dataclass(frozen=True, slots=True)
class Replay:
    """Serve the stream from position ``after + 1`` on."""

    after: int


@dataclass(frozen=True, slots=True)
class CatchUp:
    """Look the stream up again shortly: it is live, and position ``after`` (which its
    client may have been sent) is not in the store yet."""

    after: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """Answer with this status and message (a JSON error in OpenAI's shape)."""

    status: int
    message: str


def redacted(url: str) -> str:
    """``url`` without its password (``redis://user:***@host...``), for logs and banners."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def valid_key(key: str) -> bool:
    """True when ``key`` may name a stream (``ssekit-resume-key`` or a URL's id)."""
    return KEY_PATTERN.fullmatch(key) is not None


def new_stream_id(random: bytes) -> str:
    """A stream id from 16 random bytes: 128 bits, URL-safe base64 without padding."""
    if len(random) != 16:
        raise ValueError(f"a stream id takes 16 random bytes, got {len(random)}")
    return base64.urlsafe_b64encode(random).rstrip(b"=").decode("ascii")


def scoped_key(stream_id: str, token: str | None) -> str:
    """The store's key for ``stream_id`` as seen by a client holding ``token``.

    With client tokens on, each token has its own key space (a digest of the
    token, never the token itself), so another token's client cannot name,
    read or cancel the stream even knowing its id. Without tokens, one space.
    """
    if token is None:
        return f"-/{stream_id}"
    return f"{hashlib.sha256(token.encode()).hexdigest()[:32]}/{stream_id}"


#: Digits a position may have, leading zeros aside: checked before int(), which raises
#: past 4300 digits and takes quadratic time below that. No stream holds 10**18 events.
MAX_DIGITS: Final = 18

#: How long a resume request for a live stream may wait for the store to reach the
#: position it asks for (seconds): an event reaches its client before the store has it
#: (the Redis store writes in the background), and a client may resume from anything
#: it was sent. A position still past the end after this is refused.
CATCH_UP: Final = 2.0


@dataclass(frozen=True, slots=True)
class Asked:
    """The last event ID a resume request sent: where, as sent, and its value when it is a
    whole number of at most ``MAX_DIGITS`` digits (else None)."""

    where: str
    text: str
    value: int | None


def asked_position(header: bytes | None, target: str) -> Asked | None:
    """``Last-Event-ID``, else ``?last_event_id=``, else None (start from the beginning).

    The header wins over the query (a browser's ``EventSource`` reconnects to
    the same URL with a newer header).
    """
    if header is not None:
        text, where = header.decode("latin-1"), "Last-Event-ID"
    else:
        query = target.partition("?")[2]
        values = parse_qs(query, keep_blank_values=True).get("last_event_id")
        if values is None:
            return None
        text, where = values[-1], "last_event_id"
    # ASCII digits only: int() would take " 5", "+5", Arabic-Indic digits and "1_0".
    digits = text.lstrip("0")
    if not (text.isascii() and text.isdigit()) or len(digits) > MAX_DIGITS:
        return Asked(where, text, None)
    return Asked(where, text, int(digits or "0"))


def _not_a_position(asked: Asked, count: int) -> Refusal:
    return Refusal(
        400,
        f"{asked.where} {asked.text[:40]!r} is not a position in this stream: send a whole "
        f"number from 0 (from the start) to {count} (the events so far)",
    )


def start_position(header: bytes | None, target: str, count: int) -> int | Refusal:
    """The last position the reader saw (see :func:`asked_position`), 0 when none.

    Valid: a decimal position from 0 to ``count`` (the events stored so far).
    Anything else is refused with 400, never read as 0: a stale or foreign id
    must not replay everything.
    """
    asked = asked_position(header, target)
    if asked is None:
        return 0
    if asked.value is None or asked.value > count:
        return _not_a_position(asked, count)
    return asked.value


def plan_resume(
    info: StreamInfo | None,
    stream_id: str,
    header: bytes | None,
    target: str,
    now: float,
    *,
    patient: bool = False,
) -> Replay | Refusal | CatchUp:
    """What a ``GET .../streams/<id>`` gets: a replay from a position, or an error status.

    Unknown, expired and no longer resumable streams are all 404 (nothing to
    serve); a bad last event ID is 400. A position past what a live stream's
    store holds yet is :class:`CatchUp` while ``patient`` (the caller has not
    waited ``CATCH_UP`` yet), then 400.
    """
    if info is None or (info.expires is not None and now >= info.expires):
        return Refusal(404, f"no stream {stream_id!r} (unknown, or expired after --resume-ttl)")
    if not info.resumable:
        return Refusal(
            404,
            f"stream {stream_id!r} is not resumable: it passed --resume-max-bytes or the "
            "store could not keep it",
        )
    asked = asked_position(header, target)
    if asked is None:
        return Replay(0)
    if asked.value is None:
        return _not_a_position(asked, info.count)
    if asked.value > info.count:
        if patient and info.state is State.LIVE:
            return CatchUp(asked.value)
        return _not_a_position(asked, info.count)
    return Replay(asked.value)


def event_body(event: Event) -> bytes:
    """An event as it is stored: its fields and data lines, without id or blank line.

    The same decoded event comes back out (data, event type, retry); the id is
    the position, added by :func:`frame` when it is served.
    """
    wire = encode(Event(data=event.data, event=event.event, retry=event.retry), write_id=False)
    return wire[:-1]  # drop the blank line; frame() ends the event after the id


def frame(position: int, body: bytes) -> bytes:
    """One stored event on the resume endpoint: its body, ``id: <position>``, the blank line."""
    return b"%sid: %d\n\n" % (body, position)


def pieces(events: Iterable[tuple[int, bytes]], limit: int = PIECE) -> Iterator[bytes]:
    """``(position, body)`` pairs framed (:func:`frame`), as writes of at most about ``limit``
    bytes: small events joined, an event larger than ``limit`` in slices (an HTTP chunk
    boundary may fall anywhere in an event). Lazy: one piece exists at a time."""
    pending: list[bytes] = []
    size = 0
    for position, body in events:
        framed = frame(position, body) if len(body) <= limit else b""
        if pending and (not framed or size + len(framed) > limit):
            piece, pending, size = b"".join(pending), [], 0  # the parts go before the yield
            yield piece
        if not framed:
            for start in range(0, len(body), limit):
                yield body[start : start + limit]
            yield frame(position, b"")
            continue
        pending.append(framed)
        size += len(framed)
    if pending:
        piece, pending = b"".join(pending), []
        yield piece


def grace_expired(*, now: float, unattached_since: float | None, grace: float) -> bool:
    """True when a live stream has had no reader for ``grace`` seconds: close its upstream."""
    return unattached_since is not None and now - unattached_since >= grace


def owner_lost(*, state: State, owner_alive: bool) -> bool:
    """True when a stream claims to be live but its owner no longer refreshes its liveness:
    the owner died (or lost its store), so readers must see the stream cut."""
    return state is State.LIVE and not owner_alive
