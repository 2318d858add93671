"""Sans-IO reconnection policy: the EventSource rules, with backoff, caps and deadlines.

WHATWG HTML "Server-sent events" 9.2.3 (processing model): a 200 response of
type text/event-stream opens the stream; 204 (or any other status, or another
type) fails it without reconnecting; a network error or the end of the body
reestablishes the connection after the reconnection time, sending the last
event ID. The spec lets user agents back off on repeated failures: here the
delay doubles per consecutive failure, is capped, and is jittered. Two guards
keep a server from driving the client into a reconnect storm (``retry: 0``,
one event, close; again): a floor under every delay, and a cap on
reconnections per window of time, counted whether or not they brought events.
Time and randomness come in as arguments.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Final

from .._errors import ClientError, InputTypeError, ResponseError, RetriesExhausted

__all__ = (
    "CREDENTIAL_HEADERS",
    "MAX_ERROR_BODY",
    "Decision",
    "Reconnector",
    "RetryPolicy",
    "Verdict",
    "credential_names",
    "judge_response",
    "same_origin",
)

#: How much of a refused response's body a :class:`ResponseError` carries (bytes).
MAX_ERROR_BODY: Final = 64 * 1024

#: Request headers (lower case) a redirect that leaves the origin drops, as fetch drops
#: Authorization and a browser's cookies stay with their site: the API-key headers
#: of OpenAI (Authorization), Azure OpenAI (api-key) and Anthropic and others (x-api-key).
CREDENTIAL_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "cookie", "api-key", "x-api-key"}
)

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def credential_names(extra: Iterable[str]) -> frozenset[str]:
    """:data:`CREDENTIAL_HEADERS` and the caller's ``extra`` header names, lower case.

    Raises :class:`ssekit.InputTypeError` for a single str (a name to put in a list).
    """
    if isinstance(extra, str | bytes):
        raise InputTypeError(
            f"credential_headers takes a collection of header names, got {extra!r}: "
            f"wrap it: [{extra!r}]",
            argument="credential_headers",
            got=type(extra).__name__,
        )
    return CREDENTIAL_HEADERS | {name.lower() for name in extra}


def same_origin(a: tuple[str, str, int | None], b: tuple[str, str, int | None]) -> bool:
    """Whether two (scheme, host, port) triples are one origin (RFC 6454), port None
    meaning the scheme's default: a redirect between them keeps the credentials."""
    (scheme_a, host_a, port_a), (scheme_b, host_b, port_b) = a, b
    scheme_a, scheme_b = scheme_a.lower(), scheme_b.lower()
    return (
        scheme_a == scheme_b
        and host_a.lower() == host_b.lower()
        and (port_a or _DEFAULT_PORTS.get(scheme_a)) == (port_b or _DEFAULT_PORTS.get(scheme_b))
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How a client reconnects.

    ``initial_retry`` is the reconnection time (ms) until the server sends
    ``retry:``; consecutive failures multiply it by ``backoff`` up to
    ``max_delay`` (ms); each delay is jittered by up to ±``jitter`` (a
    fraction). ``max_retries`` (None: no cap) counts reconnections without a
    dispatched event in between (comments, or ``id``/``retry`` alone, are not
    progress); ``deadline`` (seconds, None: none) bounds
    the whole stream. POST requests are not replayed unless ``replay_post``.
    ``retry_statuses`` are retried like a network error (say ``{502, 503,
    504}`` behind a load balancer); by default none is, as the spec fails the
    connection on any status but 200 and 204.

    Against reconnect storms: no reconnection comes sooner than ``min_delay``
    (ms; 500, the floor Firefox puts under ``retry:``; 0 turns it off), whatever
    ``retry:`` or ``initial_retry`` say, and the backoff grows from it, so a
    ``retry: 0`` still backs off. At most ``max_reconnects`` reconnections
    start in any ``reconnect_window`` seconds (60 a minute; None: no cap),
    counted whether or not their connections brought events (a server that
    sends one event and closes makes progress on each, and would otherwise
    never be slowed): past the cap the client waits until the window allows one.
    """

    initial_retry: int = 3000
    backoff: float = 2.0
    max_delay: int = 60_000
    jitter: float = 0.1
    max_retries: int | None = 10
    deadline: float | None = None
    replay_post: bool = False
    retry_statuses: Collection[int] = frozenset()  # kept as a frozenset
    min_delay: int = 500
    max_reconnects: int | None = 60
    reconnect_window: float = 60.0

    def __post_init__(self) -> None:
        if self.initial_retry < 0 or self.max_delay < 0 or self.backoff < 1:
            raise ValueError("initial_retry and max_delay must be >= 0 ms, backoff >= 1")
        if not 0 <= self.min_delay <= self.max_delay:
            raise ValueError(
                f"min_delay is 0 to max_delay ({self.max_delay}) ms, got {self.min_delay}"
            )
        if self.max_reconnects is not None and self.max_reconnects < 1:
            raise ValueError(f"max_reconnects is None or >= 1, got {self.max_reconnects}")
        if not self.reconnect_window > 0:
            raise ValueError(f"reconnect_window is > 0 s, got {self.reconnect_window}")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter is a fraction in [0, 1)")
        statuses = frozenset(self.retry_statuses)
        if not all(300 <= status <= 599 for status in statuses):
            raise ValueError(f"retry_statuses are statuses 300-599, got {sorted(statuses)}")
        object.__setattr__(self, "retry_statuses", statuses)


class Verdict(enum.Enum):
    OPEN = "open"  # a 200 text/event-stream: read events
    # Wait ``delay`` seconds, then connect again. From ``on_response`` (a retried
    # status), the delay is still to come from ``on_end(error=decision.error)``.
    RECONNECT = "reconnect"
    STOP = "stop"  # done, no error (204, or a POST answer that ended)
    FAIL = "fail"  # raise ``error``


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    delay: float = 0.0
    error: ClientError | None = None


class Reconnector:
    """The reconnection state of one logical stream, across its connections."""

    def __init__(self, policy: RetryPolicy, *, method: str = "GET", now: float = 0.0) -> None:
        self.policy = policy
        self.method = method.upper()
        #: The reconnection time in ms (the spec's), updated by ``retry:`` fields.
        self.retry_ms = policy.initial_retry
        #: The last event ID, sent as Last-Event-ID on reconnection when non-empty.
        self.last_event_id = ""
        #: Reconnections since the last dispatched event.
        self.failures = 0
        self.connections = 0
        self._started = now
        # When the last max_reconnects reconnections start (their on_end's now + delay).
        self._starts: deque[float] | None = None
        if policy.max_reconnects is not None:
            self._starts = deque(maxlen=policy.max_reconnects)

    def request_headers(self) -> list[tuple[bytes, bytes]]:
        """What every connection sends, Last-Event-ID included when one is set."""
        # What a browser's EventSource fetch sends (no-cache, as browsers do).
        headers = [(b"accept", b"text/event-stream"), (b"cache-control", b"no-cache")]
        if self.last_event_id:
            headers.append((b"last-event-id", self.last_event_id.encode("utf-8")))
        return headers

    def on_response(self, status: int, content_type: str, body: str = "") -> Decision:
        """Judge a response head (``body``: the first bytes, for error messages).

        As :func:`judge_response`, except that a status in the policy's
        ``retry_statuses`` is RECONNECT, carrying the :class:`ResponseError`
        that :meth:`on_end` then takes as the connection's error.
        """
        self.connections += 1
        decision = judge_response(status, content_type, body)
        if decision.verdict is Verdict.FAIL and status in self.policy.retry_statuses:
            return Decision(Verdict.RECONNECT, error=decision.error)
        return decision

    def on_chunk(self, last_event_id: str, retry: int | None, *, events: int) -> None:
        """After a chunk was decoded: keep the decoder's last event ID and reconnection time.

        Only a dispatched event (``events`` > 0) is progress: then failures
        start over. Comments, and ``id`` or ``retry`` without data, keep the
        state but do not reset the backoff or the ``max_retries`` count.
        """
        self.last_event_id = last_event_id
        if retry is not None:
            self.retry_ms = retry
        if events:
            self.failures = 0

    def on_end(self, *, now: float, random: float, error: Exception | None = None) -> Decision:
        """The connection ended (``error`` None: the body ended cleanly).

        ``random`` is a number in [0, 1) for the jitter; ``now`` the monotonic
        time in seconds. The delay is the reconnection time, backed off per
        failure, capped, jittered, never under ``min_delay``, and stretched
        when ``max_reconnects`` reconnections already start within the
        ``reconnect_window`` that would end with this one.
        """
        policy = self.policy
        if self.method != "GET" and not policy.replay_post:
            if error is None:
                return Decision(Verdict.STOP)
            return Decision(
                Verdict.FAIL,
                error=_give_up(f"{self.method} stream was cut and is not replayed", error, None),
            )
        if policy.max_retries is not None and self.failures >= policy.max_retries:
            return Decision(
                Verdict.FAIL,
                error=_give_up(
                    f"gave up after {self.failures} reconnections", error, self.failures
                ),
            )
        # The floor goes under the base too, or a retry: 0 would never back off
        # (0 doubled stays 0).
        base = max(self.retry_ms, policy.min_delay)
        delay_ms = min(base * policy.backoff**self.failures, policy.max_delay)
        delay = max(delay_ms * (1 + policy.jitter * (2 * random - 1)), policy.min_delay) / 1000
        starts = self._starts
        if starts is not None and len(starts) == starts.maxlen:
            # The oldest of the last max_reconnects starts must leave the window first.
            delay = max(delay, starts[0] + policy.reconnect_window - now)
        if policy.deadline is not None and now + delay - self._started > policy.deadline:
            return Decision(
                Verdict.FAIL,
                error=_give_up(
                    f"deadline of {policy.deadline:g}s would pass", error, self.failures
                ),
            )
        self.failures += 1
        if starts is not None:
            starts.append(now + delay)
        return Decision(Verdict.RECONNECT, delay=delay)


def judge_response(status: int, content_type: str, body: str = "") -> Decision:
    """Judge one response head by the EventSource's rules (HTML 9.2.3), without state.

    In: the status, the Content-Type header ("" when absent) and, for the
    error message, the start of the body. Out: OPEN for a 200
    ``text/event-stream`` (any parameters), STOP for 204 (the server asks the
    client to stop), else FAIL carrying a :class:`ResponseError` with all three.
    """
    if status == 204:
        return Decision(Verdict.STOP)
    if status != 200:
        problem = f"server answered {status}, not 200"
    elif content_type.split(";", 1)[0].strip().lower() != "text/event-stream":
        problem = f"server answered with content type {content_type!r}, not text/event-stream"
    else:
        return Decision(Verdict.OPEN)
    message = f"{problem}; not reconnecting (content type {content_type!r}): {body[:200]!r}"
    return Decision(Verdict.FAIL, error=ResponseError(message, status, body, content_type))


def _give_up(message: str, error: Exception | None, reconnections: int | None) -> ClientError:
    """The error to fail with, chained to the last connection's ``error``: a
    :class:`RetriesExhausted` after ``reconnections``, or (None) a plain :class:`ClientError`."""
    detail = f" (last error: {error})" if error is not None else ""
    failure = (
        ClientError(message + detail)
        if reconnections is None
        else RetriesExhausted(message + detail, reconnections)
    )
    failure.__cause__ = error
    return failure
