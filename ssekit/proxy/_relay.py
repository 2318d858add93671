"""Sans-IO decisions of one proxied exchange: admit or refuse, retry, heartbeat, how it ended.

The server layer moves bytes, keeps deadlines and cancels; everything it must
decide comes from here, with time passed in as an argument.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Final

from .._errors import StateError, UpstreamError
from ._config import ProxyConfig
from ._headers import get_header
from ._stats import Outcome

__all__ = (
    "Admin",
    "Forward",
    "Input",
    "Phase",
    "Refuse",
    "Relay",
    "admit",
    "error_body",
    "heartbeat_due",
    "retry_delay",
)

REASONS: Final = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def error_body(status: int, message: str) -> bytes:
    """A JSON error body in OpenAI's shape, so SDKs surface the message."""
    kind = "proxy_error" if status >= 500 else "invalid_request_error"
    return json.dumps(
        {"error": {"message": message, "type": kind, "param": None, "code": status}}
    ).encode()


@dataclass(frozen=True, slots=True)
class Forward:
    """Send upstream, to this origin-form target (the upstream's path prefix added)."""

    target: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer here with this status and message; nothing goes upstream."""

    status: int
    message: str
    outcome: Outcome = Outcome.BAD_REQUEST


@dataclass(frozen=True, slots=True)
class Admin:
    """One of the proxy's own endpoints: "metrics" or "health"."""

    name: str


def admit(
    method: str, target: str, headers: list[tuple[bytes, bytes]], config: ProxyConfig
) -> Forward | Refuse | Admin:
    """Decide what to do with a request head the client sent."""
    size = len(target) + sum(len(k) + len(v) + 4 for k, v in headers)
    if size > config.max_header_size:
        # h11 bounds a head still arriving; one that arrived whole is measured here.
        return Refuse(
            431,
            f"request head of about {size} bytes is over the proxy's limit of "
            f"{config.max_header_size} (--max-header-size)",
        )
    if method == "CONNECT":
        return Refuse(405, "CONNECT is not supported: this is a reverse proxy, not an open proxy")
    if get_header(headers, b"content-length") is not None and (
        get_header(headers, b"transfer-encoding") is not None
    ):
        # RFC 9112 6.3: a request with both is a smuggling risk; refuse it.
        return Refuse(400, "request has both Content-Length and Transfer-Encoding; send one")
    if not target.startswith("/"):
        # Absolute form (or "*"): as a reverse proxy we only ever serve our one
        # upstream, so a target naming a host is refused rather than rewritten.
        return Refuse(
            400,
            f"request target {target!r} is not origin-form (/path); this reverse proxy "
            "forwards only to its configured upstream",
        )
    path = target.split("?", 1)[0]
    if path.startswith(config.admin_prefix + "/"):
        name = path[len(config.admin_prefix) + 1 :]
        if method == "GET" and name in ("metrics", "health"):
            return Admin(name)
        return Refuse(
            404,
            f"no endpoint {path}; the proxy serves {config.admin_prefix}/metrics "
            f"and {config.admin_prefix}/health",
            Outcome.LOCAL,
        )
    if config.client_tokens:
        auth = (get_header(headers, b"authorization") or b"").decode("latin-1")
        token = auth[7:] if auth[:7].lower() == "bearer " else ""
        if token not in config.client_tokens:
            return Refuse(
                401,
                "missing or wrong proxy token: send Authorization: Bearer <token>",
                Outcome.UNAUTHORIZED,
            )
    return Forward(config.origin.base_path + target)


def retry_delay(
    error: UpstreamError, *, bytes_sent: int, attempt: int, config: ProxyConfig
) -> float | None:
    """Seconds to wait before another attempt, or None to give up.

    Only failures before any byte of the request went upstream are retried:
    once the request started flowing, a second copy could run it twice.
    """
    if bytes_sent or attempt >= config.retries:
        return None
    return float(config.retry_backoff * 2.0**attempt)


class Phase(enum.Enum):
    WAITING = "waiting"  # request sent (or being sent); no response head yet
    STREAMING = "streaming"  # response head went to the client; body flowing
    DONE = "done"  # complete response forwarded
    ANSWERED = "answered"  # failed before the head: an error status was sent
    CUT = "cut"  # failed after the head: the client's response was cut


class Input(enum.Enum):
    HEAD = "head"  # upstream response head arrived and was forwarded
    CHUNK = "chunk"  # a body chunk was forwarded
    END = "end"  # upstream's message ended
    UPSTREAM_FAILED = "upstream_failed"  # connect, protocol or cut
    TIMED_OUT = "timed_out"  # connect, first-byte or idle timeout
    CLIENT_GONE = "client_gone"  # the client disconnected
    SHUTDOWN = "shutdown"  # drain deadline passed


_TABLE: Final[dict[tuple[Phase, Input], tuple[Phase, Outcome]]] = {
    (Phase.WAITING, Input.HEAD): (Phase.STREAMING, Outcome.COMPLETE),
    (Phase.WAITING, Input.UPSTREAM_FAILED): (Phase.ANSWERED, Outcome.UPSTREAM_ERROR),
    (Phase.WAITING, Input.TIMED_OUT): (Phase.ANSWERED, Outcome.UPSTREAM_TIMEOUT),
    (Phase.WAITING, Input.CLIENT_GONE): (Phase.CUT, Outcome.CLIENT_DISCONNECT),
    (Phase.WAITING, Input.SHUTDOWN): (Phase.ANSWERED, Outcome.SHUTDOWN),
    (Phase.STREAMING, Input.CHUNK): (Phase.STREAMING, Outcome.COMPLETE),
    (Phase.STREAMING, Input.END): (Phase.DONE, Outcome.COMPLETE),
    (Phase.STREAMING, Input.UPSTREAM_FAILED): (Phase.CUT, Outcome.UPSTREAM_CUT),
    (Phase.STREAMING, Input.TIMED_OUT): (Phase.CUT, Outcome.UPSTREAM_TIMEOUT),
    (Phase.STREAMING, Input.CLIENT_GONE): (Phase.CUT, Outcome.CLIENT_DISCONNECT),
    (Phase.STREAMING, Input.SHUTDOWN): (Phase.CUT, Outcome.SHUTDOWN),
}


class Relay:
    """The phase of one exchange, moved by inputs through an explicit table.

    ``on(input)`` returns the new phase; a pair missing from the table raises
    :class:`StateError` (a bug in the I/O layer, never a peer's fault).
    ``answer_status`` says which status to send when a failure lands in
    ANSWERED; after the head went out a failure can only cut the stream.
    """

    def __init__(self) -> None:
        self.phase = Phase.WAITING
        self.outcome = Outcome.COMPLETE

    def on(self, event: Input) -> Phase:
        try:
            self.phase, self.outcome = _TABLE[self.phase, event]
        except KeyError:
            raise StateError(f"relay got {event.value} in phase {self.phase.value}") from None
        return self.phase

    @staticmethod
    def answer_status(error: UpstreamError | None) -> int:
        return 503 if error is None else error.status


def heartbeat_due(
    *, now: float, last_write: float, interval: float | None, at_boundary: bool
) -> bool:
    """A heartbeat comment is due: idle long enough, and between two events."""
    return interval is not None and at_boundary and now - last_write >= interval
