"""Sans-IO decisions of one proxied exchange: admit or refuse, retry, heartbeat, how it ended.

The server layer moves bytes, keeps deadlines and cancels; everything it must
decide comes from here, with time passed in as an argument.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from .._errors import StateError, UpstreamError
from .._http import get_header, head_size
from ._config import ProxyConfig, token_matches
from ._stats import Outcome

__all__ = (
    "Admin",
    "Forward",
    "Input",
    "Phase",
    "Refuse",
    "Relay",
    "admit",
    "bearer_token",
    "heartbeat_due",
    "retry_delay",
    "retry_on_fresh_connection",
)


class Phase(enum.Enum):
    WAITING = "waiting"  # request admitted (maybe sent); no response head yet
    STREAMING = "streaming"  # response head went to the client; body flowing
    DONE = "done"  # complete response forwarded, or answered by the proxy itself
    ANSWERED = "answered"  # refused or failed before the head: an error status was sent
    CUT = "cut"  # failed after the head: the client's response was cut


class Input(enum.Enum):
    HEAD = "head"  # upstream response head arrived and was forwarded
    CHUNK = "chunk"  # a body chunk was forwarded
    END = "end"  # upstream's message ended, and so did the client's response
    LOCAL = "local"  # the proxy answered itself (its own endpoints)
    BAD_REQUEST = "bad_request"  # the client's request was malformed or too slow
    UNAUTHORIZED = "unauthorized"  # missing or wrong token
    OVERLOADED = "overloaded"  # over --max-connections
    UPSTREAM_FAILED = "upstream_failed"  # connect, protocol or cut
    TIMED_OUT = "timed_out"  # connect, first-byte or idle timeout
    CLIENT_GONE = "client_gone"  # the client disconnected
    SHUTDOWN = "shutdown"  # drain deadline passed
    BUG = "bug"  # the proxy failed (logged with a traceback)


_TABLE: Final[dict[tuple[Phase, Input], tuple[Phase, Outcome]]] = {
    (Phase.WAITING, Input.HEAD): (Phase.STREAMING, Outcome.COMPLETE),
    (Phase.WAITING, Input.LOCAL): (Phase.DONE, Outcome.LOCAL),
    (Phase.WAITING, Input.BAD_REQUEST): (Phase.ANSWERED, Outcome.BAD_REQUEST),
    (Phase.WAITING, Input.UNAUTHORIZED): (Phase.ANSWERED, Outcome.UNAUTHORIZED),
    (Phase.WAITING, Input.OVERLOADED): (Phase.ANSWERED, Outcome.OVERLOADED),
    (Phase.WAITING, Input.UPSTREAM_FAILED): (Phase.ANSWERED, Outcome.UPSTREAM_ERROR),
    (Phase.WAITING, Input.TIMED_OUT): (Phase.ANSWERED, Outcome.UPSTREAM_TIMEOUT),
    (Phase.WAITING, Input.CLIENT_GONE): (Phase.CUT, Outcome.CLIENT_DISCONNECT),
    (Phase.WAITING, Input.SHUTDOWN): (Phase.CUT, Outcome.SHUTDOWN),
    (Phase.WAITING, Input.BUG): (Phase.CUT, Outcome.INTERNAL_ERROR),
    (Phase.STREAMING, Input.CHUNK): (Phase.STREAMING, Outcome.COMPLETE),
    (Phase.STREAMING, Input.END): (Phase.DONE, Outcome.COMPLETE),
    (Phase.STREAMING, Input.BAD_REQUEST): (Phase.CUT, Outcome.BAD_REQUEST),
    (Phase.STREAMING, Input.UPSTREAM_FAILED): (Phase.CUT, Outcome.UPSTREAM_CUT),
    (Phase.STREAMING, Input.TIMED_OUT): (Phase.CUT, Outcome.UPSTREAM_TIMEOUT),
    (Phase.STREAMING, Input.CLIENT_GONE): (Phase.CUT, Outcome.CLIENT_DISCONNECT),
    (Phase.STREAMING, Input.SHUTDOWN): (Phase.CUT, Outcome.SHUTDOWN),
    (Phase.STREAMING, Input.BUG): (Phase.CUT, Outcome.INTERNAL_ERROR),
}


class Relay:
    """The phase of one exchange, moved by inputs through an explicit table.

    ``on(input)`` returns the new phase; a pair missing from the table raises
    :class:`StateError` (a bug in the I/O layer, never a peer's fault). The
    outcome an exchange is logged and counted with is ``outcome`` at its end,
    so it is decided here and nowhere else. ``answer_status`` says which status
    to send when a failure lands in ANSWERED; after the head went out a failure
    can only cut the stream.
    """

    __slots__ = ("outcome", "phase")

    def __init__(self) -> None:
        self.phase = Phase.WAITING
        self.outcome = Outcome.COMPLETE

    def on(self, event: Input) -> Phase:
        try:
            self.phase, self.outcome = _TABLE[self.phase, event]
        except KeyError:
            raise StateError(f"relay got {event.value} in phase {self.phase.value}") from None
        return self.phase

    @property
    def open(self) -> bool:
        """True while the exchange has not ended (waiting for or streaming a response)."""
        return self.phase is Phase.WAITING or self.phase is Phase.STREAMING

    @staticmethod
    def answer_status(error: UpstreamError | None) -> int:
        return 503 if error is None else error.status


@dataclass(frozen=True, slots=True)
class Forward:
    """Send upstream, to this origin-form target (the upstream's path prefix added)."""

    target: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer here with this status and message; nothing goes upstream.

    ``input`` is what the refusal means to the exchange's :class:`Relay`.
    """

    status: int
    message: str
    input: Input = Input.BAD_REQUEST


@dataclass(frozen=True, slots=True)
class Admin:
    """One of the proxy's own endpoints: "metrics", "health", "streams" (resumption),
    "status" (the status page) or "events" (its feed)."""

    name: str


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str:
    """The token of ``Authorization: Bearer <token>``, or "" when there is none."""
    auth = (get_header(headers, b"authorization") or b"").decode("latin-1")
    return auth[7:] if auth[:7].lower() == "bearer " else ""


def _climbs(path: str) -> bool:
    """True when a segment of ``path`` is ``.`` or ``..``, percent-encoded or not.

    Such a target could leave the upstream's path prefix once a server
    normalises it; a reverse proxy has no business forwarding it.
    """
    decoded = unquote(path).replace("\\", "/")
    return any(segment in (".", "..") for segment in decoded.split("/"))


def admit(
    method: str,
    target: str,
    headers: list[tuple[bytes, bytes]],
    config: ProxyConfig,
    http_version: bytes = b"1.1",
) -> Forward | Refuse | Admin:
    """Decide what to do with a request head the client sent."""
    if not http_version.startswith(b"1."):
        # RFC 9110 2.5: another major version is another protocol; a higher
        # minor (HTTP/1.2) is served as the highest 1.x we speak.
        return Refuse(
            505, f"HTTP/{http_version.decode('ascii', 'replace')} is not supported; send HTTP/1.1"
        )
    size = head_size(f"{method} {target} HTTP/1.1".encode(), headers)
    if size > config.max_header_size:
        # The connection bounds a head still arriving; one that arrived whole is measured here.
        return Refuse(
            431,
            f"request head of about {size} bytes is over the proxy's limit of "
            f"{config.max_header_size} (--max-header-size)",
        )
    if method == "CONNECT":
        return Refuse(405, "CONNECT is not supported: this is a reverse proxy, not an open proxy")
    transfer_encoding = get_header(headers, b"transfer-encoding")
    if get_header(headers, b"content-length") is not None and transfer_encoding is not None:
        # RFC 9112 6.3: a request with both is a smuggling risk; refuse it.
        return Refuse(400, "request has both Content-Length and Transfer-Encoding; send one")
    if transfer_encoding is not None and http_version == b"1.0":
        # RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means the framing is faulty.
        return Refuse(400, "HTTP/1.0 request with Transfer-Encoding: send Content-Length")
    if not target.startswith("/"):
        # Absolute form (or "*"): as a reverse proxy we only ever serve our one
        # upstream, so a target naming a host is refused rather than rewritten.
        return Refuse(
            400,
            f"request target {target!r} is not origin-form (/path); this reverse proxy "
            "forwards only to its configured upstream",
        )
    path = target.split("?", 1)[0]
    if _climbs(path):
        return Refuse(400, f"request path {path!r} has a '.' or '..' segment; send a plain path")
    if path.startswith(config.admin_prefix + "/"):
        return _admin(method, path, headers, config)
    if config.client_tokens and not token_matches(bearer_token(headers), config.client_tokens):
        return Refuse(
            401,
            "missing or wrong proxy token: send Authorization: Bearer <token>",
            Input.UNAUTHORIZED,
        )
    return Forward(config.origin.base_path + target)


def _admin(
    method: str, path: str, headers: list[tuple[bytes, bytes]], config: ProxyConfig
) -> Admin | Refuse:
    """The proxy's own endpoints: health is open (load balancers); metrics need a token
    (an admin token, else a client token) whenever any token is configured."""
    name = path[len(config.admin_prefix) + 1 :]
    if config.resume_store is not None and name.startswith("streams/"):
        return Admin("streams")  # resumable streams: GET and DELETE, tokens checked there
    if method == "GET" and name in ("", "events"):
        return Admin("events" if name else "status")  # the status page: tokens checked there
    if method != "GET" or name not in ("metrics", "health"):
        return Refuse(
            404,
            f"no endpoint {method} {path}; the proxy serves GET {config.admin_prefix}/metrics, "
            f"GET {config.admin_prefix}/health and the status page, GET {config.admin_prefix}/",
            Input.LOCAL,
        )
    tokens = config.admin_tokens or config.client_tokens
    if name == "metrics" and tokens and not token_matches(bearer_token(headers), tokens):
        return Refuse(
            401,
            "metrics need a token: send Authorization: Bearer <admin token>",
            Input.UNAUTHORIZED,
        )
    return Admin(name)


def retry_delay(error: UpstreamError, *, attempt: int, config: ProxyConfig) -> float | None:
    """Seconds to wait before connecting again after ``error``, or None to give up.

    Only connect failures come here: no byte of the request went anywhere.
    """
    if attempt >= config.retries:
        return None
    return float(config.retry_backoff * 2.0**attempt)


def retry_on_fresh_connection(*, reused: bool, bytes_received: int, replayable: bool) -> bool:
    """After a failure before the response head: send the request again on a new connection?

    Yes when the failed connection was a kept-alive one that closed before any
    byte of an answer (the upstream dropped an idle connection as we reused
    it: nothing reached a live exchange), and the request body is still held.
    Never for a new connection: that failure is the upstream's answer.
    """
    return reused and bytes_received == 0 and replayable


def heartbeat_due(
    *, now: float, last_write: float, interval: float | None, at_boundary: bool
) -> bool:
    """A heartbeat comment is due: idle long enough, and between two events."""
    return interval is not None and at_boundary and now - last_write >= interval
