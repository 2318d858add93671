"""The live status page: ``GET <admin prefix>/`` and the stream that feeds it, ``/events``.

The :class:`Board` keeps this worker's open exchanges (the very ``StreamStats``
the tap updates, so watching costs the hot path nothing) and its last
:data:`FINISHED_KEPT` finished ones. The feed is a ``text/event-stream``
written with ssekit's encoder: a ``snapshot`` first, then every :data:`TICK`
seconds an ``update`` (the open streams as they are now, the exchanges finished
since, the totals). Each message's id is a cursor, the last finished exchange
sent from each worker (``pid:seq,...``): an ``EventSource`` that reconnects
sends it back as ``Last-Event-ID`` and gets exactly the exchanges that finished
since, from whichever worker answers; a cursor too old for the rings (or
unreadable) gets a fresh snapshot instead.

Bounds: a subscriber holds one message at a time, and one that takes none of
it for :data:`DROP_AFTER` seconds is dropped (its browser reconnects and
resumes); open streams are listed up to :data:`OPEN_SHOWN` (the oldest), the
total counted beside them.

With ``--workers``, a worker serving a page touches a ``watching`` file in the
metrics directory; while it is fresh, every worker leaves its board in
``<pid>.status`` each second (with its counters), and the page's worker joins
them in. Nothing is written while no page is open.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import heapq
import json
import os
import time
from collections import deque
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio

from .._encoder import encode
from .._event import Event
from .._http import ClientGone, Downstream, RequestHead, error_body, get_header
from ._config import ProxyConfig, token_matches
from ._relay import Input, Relay, bearer_token
from ._stats import Metrics, Outcome, StreamStats

if TYPE_CHECKING:
    from ._exchange import Shared

__all__ = ("Board", "serve_status")

#: Seconds between two updates of the feed.
TICK: Final = 0.5
#: Finished exchanges each worker keeps for the page.
FINISHED_KEPT: Final = 300
#: Open streams listed per update (the oldest first); the count covers them all.
OPEN_SHOWN: Final = 200
#: A stream with no event for this long is shown as stalled (the page's ``?stall=`` overrides).
STALL_AFTER: Final = 5.0
#: A subscriber that takes none of a message for this long is dropped.
DROP_AFTER: Final = 5.0
#: A sibling's ``<pid>.status`` older than this is ignored (the worker died, or no page asks).
SHARE_FRESH: Final = 3.0
#: While the ``watching`` file is younger than this, every worker leaves its board.
WATCH_FRESH: Final = 5.0

Row = dict[str, Any]


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


class Board:
    """This worker's open and recently finished exchanges, and the view the page gets."""

    def __init__(self, metrics: Metrics, metrics_dir: Path | None, config: ProxyConfig) -> None:
        self._metrics = metrics
        self._dir = metrics_dir
        self._config = config
        self._pid = os.getpid()  # a worker makes its board after the fork
        self._open: dict[int, tuple[int, StreamStats]] = {}
        self._serial = 0
        self._ended = 0  # the sequence number of the last finished exchange kept
        self.finished: deque[Row] = deque(maxlen=FINISHED_KEPT)
        #: Open client connections (the listener sets it).
        self.connections: Callable[[], int] = lambda: 0
        #: The resume store's state, when there is one (``Shared`` sets it).
        self.resume_health: Callable[[], dict[str, str]] | None = None
        #: Set when the proxy drains: feeds end, so they do not hold the drain up.
        self.closing = False
        self._view: dict[str, Any] | None = None
        self._view_at = 0.0
        self._view_ended = 0
        self._last_totals: tuple[float, int, int] | None = None
        self._rates = (0.0, 0.0)

    # -- the exchanges (called by the exchange, once each) --

    def opened(self, stats: StreamStats) -> None:
        """An exchange began (all do; ``forget`` takes the page's own out)."""
        self._serial += 1
        self._open[id(stats)] = (self._serial, stats)

    def forget(self, stats: StreamStats) -> None:
        """Not an exchange to show (the page and its own feed)."""
        self._open.pop(id(stats), None)

    def ended(self, stats: StreamStats) -> None:
        """An exchange ended: kept among the finished ones, unless the proxy answered it
        itself (its own endpoints). One refused before it began (a 503 over
        --max-connections, a malformed head) was never opened: it gets its serial now."""
        entry = self._open.pop(id(stats), None)
        if stats.outcome is Outcome.LOCAL:
            return
        if entry is None:
            self._serial += 1
            entry = (self._serial, stats)
        self._ended += 1
        row = _row(f"{self._pid}:{entry[0]}", stats)
        row["seq"] = self._ended
        row["ended"] = round(stats.arrived + stats.duration, 3)
        row["duration"] = _round(stats.duration)
        row["outcome"] = stats.outcome.value
        self.finished.append(row)

    # -- what one worker shares --

    def share(self) -> dict[str, Any]:
        """This worker's board as JSON-able data (for its siblings, and its own view)."""
        entries = self._open.values()
        events = self._metrics.events + sum(stats.events for _, stats in entries)
        size = self._metrics.body_bytes + sum(stats.body_bytes for _, stats in entries)
        oldest = heapq.nsmallest(OPEN_SHOWN, entries, key=lambda entry: entry[1].arrived)
        return {
            "pid": self._pid,
            "open": [_row(f"{self._pid}:{serial}", stats) for serial, stats in oldest],
            "open_count": len(entries),
            "finished": list(self.finished),
            "events": events,
            "bytes": size,
            "connections": self.connections(),
        }

    def write_share(self) -> None:
        """With workers: leave this board for the sibling serving a page, if one is open."""
        if self._dir is None:
            return
        try:
            if time.time() - (self._dir / "watching").stat().st_mtime > WATCH_FRESH:
                return
        except OSError:
            return
        path = self._dir / f"{self._pid}.status"
        scratch = path.with_suffix(".status-tmp")
        scratch.write_text(json.dumps(self.share()))
        scratch.replace(path)

    # -- the view (every worker's, for the page) --

    def view(self) -> dict[str, Any]:
        """Every worker's open and finished exchanges and the totals, computed at most once
        per half tick whatever the number of pages open (sooner when one of this worker's
        exchanges finished meanwhile)."""
        now = time.monotonic()
        fresh = now - self._view_at < TICK / 2 and self._view_ended == self._ended
        if self._view is not None and fresh:
            return self._view
        shares = [self.share()]
        outcomes = {k.value: v for k, v in self._metrics.outcomes.items()}
        alive = 1
        if self._dir is not None:
            with contextlib.suppress(OSError):
                (self._dir / "watching").touch()
            mine = self._pid
            for path in self._dir.iterdir():
                with contextlib.suppress(OSError, ValueError):
                    if path.suffix == ".status" and path.stem != str(mine):
                        if time.time() - path.stat().st_mtime <= SHARE_FRESH:
                            shares.append(json.loads(path.read_text()))
                    elif path.suffix == ".json" and path.stem != str(mine):
                        snap = json.loads(path.read_text())
                        alive += not snap.get("retired")
                        for outcome, count in snap.get("outcomes", {}).items():
                            outcomes[outcome] = outcomes.get(outcome, 0) + count
        wall = time.time()
        open_rows = sorted((row for s in shares for row in s["open"]), key=lambda r: r["arrived"])
        for row in open_rows:
            row["age"] = round(wall - row["arrived"], 3)
            since = row["arrived"] + (row["last_event"] or 0.0)
            row["idle"] = round(max(0.0, wall - since), 3)
        events = sum(int(s["events"]) for s in shares)
        size = sum(int(s["bytes"]) for s in shares)
        if self._last_totals is not None:
            then, events_then, bytes_then = self._last_totals
            span = max(now - then, 1e-3)
            self._rates = (
                max(0.0, (events - events_then) / span),
                max(0.0, (size - bytes_then) / span),
            )
        self._last_totals = (now, events, size)
        self._view = {
            "time": round(wall, 3),
            "worker": self._pid,
            "open": open_rows[:OPEN_SHOWN],
            "finished": {int(s["pid"]): s["finished"] for s in shares},
            "totals": {
                "open_streams": sum(int(s["open_count"]) for s in shares),
                "connections": sum(int(s["connections"]) for s in shares),
                "workers_alive": alive,
                "events_per_s": round(self._rates[0], 1),
                "bytes_per_s": round(self._rates[1], 1),
                "events": events,
                "bytes": size,
                "outcomes": outcomes,
                "resume": None if self.resume_health is None else self.resume_health(),
                "stall_after": STALL_AFTER,
            },
        }
        self._view_at = now
        self._view_ended = self._ended
        return self._view


def _row(key: str, stats: StreamStats) -> Row:
    return {
        "id": key,
        "arrived": round(stats.arrived, 3),
        "client": stats.client,
        "method": stats.method,
        "path": stats.path,
        "model": stats.model,
        "key": stats.key_label,
        "status": stats.status,
        "events": stats.events,
        "bytes": stats.body_bytes,
        "ttfb": _round(stats.upstream_first_byte),
        "first_event": _round(stats.first_event),
        "ttft": _round(stats.first_token),
        "last_event": _round(stats.last_event),
        "stream_id": stats.stream_id,
    }


# -- the feed's messages --

Cursor = dict[int, int]  # worker pid -> seq of the last finished exchange sent


def parse_cursor(text: bytes | None) -> Cursor | None:
    """A ``Last-Event-ID`` as this feed wrote it, or None (then a snapshot is due)."""
    if not text:
        return None
    cursor: Cursor = {}
    try:
        for part in text.decode("ascii").split(","):
            pid, _, seq = part.partition(":")
            cursor[int(pid)] = int(seq)
    except (UnicodeDecodeError, ValueError):
        return None
    return cursor


def _cursor_id(cursor: Cursor) -> str:
    return ",".join(f"{pid}:{seq}" for pid, seq in sorted(cursor.items()))


def compose(view: dict[str, Any], cursor: Cursor | None) -> tuple[bytes, Cursor]:
    """The next message for a subscriber at ``cursor`` (None: a snapshot) and its new cursor.

    An update carries the exchanges finished after the cursor; when a worker's ring
    no longer holds the one right after it (too many finished meanwhile), a snapshot
    is sent instead, so the page never silently misses one.
    """
    rings: dict[int, list[Row]] = view["finished"]
    kind = "update"
    if cursor is not None:
        for pid, rows in rings.items():
            after = cursor.get(pid, 0)
            if rows and rows[0]["seq"] > after + 1 and rows[-1]["seq"] > after:
                cursor = None  # a gap: what finished in between is no longer kept
                break
    if cursor is None:
        kind, cursor = "snapshot", {}
    finished: list[Row] = []
    new_cursor = dict(cursor)
    for pid, rows in rings.items():
        after = cursor.get(pid, 0)
        finished += [{**row, "worker": pid} for row in rows if row["seq"] > after]
        if rows:
            new_cursor[pid] = max(after, rows[-1]["seq"])
    finished.sort(key=lambda row: row["ended"])
    data = {
        "time": view["time"],
        "worker": view["worker"],
        "open": view["open"],
        "finished": finished[-FINISHED_KEPT:],
        "totals": view["totals"],
    }
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    event = Event(event=kind, data=text, id=_cursor_id(new_cursor) or "0")
    return encode(event), new_cursor


# -- the endpoints --


def authorized(headers: list[tuple[bytes, bytes]], config: ProxyConfig) -> bool:
    """The admin token (else a client token) when any token is configured, as for the
    metrics; sent as a Bearer token, or as the password of HTTP Basic (what a browser
    asks a person for and then sends with the page's own requests)."""
    tokens = config.admin_tokens or config.client_tokens
    if not tokens:
        return True
    token = bearer_token(headers)
    if not token:
        auth = (get_header(headers, b"authorization") or b"").decode("latin-1")
        if auth[:6].lower() == "basic ":
            with contextlib.suppress(binascii.Error, UnicodeDecodeError):
                token = base64.b64decode(auth[6:].strip(), validate=True).decode().partition(":")[2]
    return token_matches(token, tokens)


@functools.cache
def page() -> bytes:
    """The page: one HTML file, its script and style inline."""
    return resources.files(__package__).joinpath("status.html").read_bytes()


#: Only what the page itself holds may run or load: nothing from elsewhere.
POLICY: Final = (
    b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    b"connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'"
)


async def serve_status(
    shared: Shared,
    client: Downstream,
    request: RequestHead,
    relay: Relay,
    stats: StreamStats,
    name: str,
) -> bool:
    """Answer ``GET <prefix>/`` (``name`` "status": the page) or ``GET <prefix>/events``
    ("events": its feed); True when the connection may go on."""
    board = shared.board
    board.forget(stats)
    config = shared.config
    headers = list(request.headers)
    if not authorized(headers, config):
        relay.on(Input.UNAUTHORIZED)
        stats.status = 401
        stats.error = "the status page needs a token: Authorization: Bearer <admin token>"
        body = error_body(401, stats.error)
        await _send(
            client, 401, body, b"application/json", [(b"www-authenticate", b'Basic realm="ssekit"')]
        )
        return True
    relay.on(Input.LOCAL)
    stats.status = 200
    if name != "events":
        policy = [(b"content-security-policy", POLICY), (b"cache-control", b"no-store")]
        await _send(client, 200, page(), b"text/html; charset=utf-8", policy)
        return True
    await client.send_response(
        200,
        [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
            (b"via", b"1.1 ssekit"),
        ],
    )
    cursor = parse_cursor(get_header(headers, b"last-event-id"))
    first = encode(Event(retry=1000, data="", event="hello"))
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch, client, tg.cancel_scope, config.max_header_size)
            message = first
            while not board.closing:
                chunk, cursor = compose(board.view(), cursor)
                with anyio.move_on_after(DROP_AFTER) as late:
                    await client.send_data(message + chunk)
                if late.cancelled_caught:
                    stats.error = f"a status page took nothing for {DROP_AFTER:g}s: dropped"
                    break
                message = b""
                await anyio.sleep(TICK)
            else:
                await client.send_end()
            tg.cancel_scope.cancel()
    except* ClientGone:
        pass
    return False


async def _send(
    client: Downstream,
    status: int,
    body: bytes,
    content_type: bytes,
    extra: list[tuple[bytes, bytes]],
) -> None:
    head = [
        (b"content-type", content_type),
        (b"content-length", b"%d" % len(body)),
        (b"via", b"1.1 ssekit"),
        *extra,
    ]
    await client.send_response(status, head)
    await client.send_data(body)
    await client.send_end()


async def _watch(client: Downstream, scope: anyio.CancelScope, max_held: int) -> None:
    """End the feed when the page goes away (EOF or reset)."""
    await client.wait_gone(max_held)
    scope.cancel()
