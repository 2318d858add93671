"""ProxyConfig: the upstream, the listen address, every timeout and limit.

Each option's default and help text are said here once; ``ssekit proxy`` builds
its command line from these fields (``metadata["help"]``, ``metadata["metavar"]``,
and ``metadata["group"]``, the ``--help`` section it is listed in; forwarding when
a field names none).
"""

from __future__ import annotations

import enum
import hmac
from dataclasses import dataclass, field
from typing import Any, Literal

from .._errors import ConfigError
from .._http import Origin, check_engine

__all__ = ("Group", "Origin", "ProxyConfig")


class Group(enum.Enum):
    """The section of ``ssekit proxy --help`` an option is listed in, in this order."""

    FORWARDING = "forwarding"
    TIMEOUTS = "timeouts"
    LIMITS = "limits"
    KEYS = "keys and tokens"
    RESUME = "resume"
    USAGE = "usage and cost"
    OPERATIONS = "operations"


def _option(
    default: Any, help: str, metavar: str | None = None, *, group: Group | None = None
) -> Any:
    """A field that is also a ``--dashed-name`` option of ``ssekit proxy``."""
    metadata = {"help": help, "metavar": metavar}
    return field(
        default=default, metadata=metadata if group is None else {**metadata, "group": group}
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyConfig:
    """Everything the proxy needs, validated at construction.

    Times are in seconds. ``heartbeat=None`` keeps the proxy byte-transparent.
    ``api_keys``, ``client_tokens`` and ``admin_tokens`` come from environment
    variables on the command line (``--api-key-env`` and friends), never argv.
    Raises :class:`ConfigError` naming the bad value.
    """

    upstream: str
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    connect_timeout: float = _option(
        10.0, "upstream TCP/TLS connect timeout (then 504)", "S", group=Group.TIMEOUTS
    )
    first_byte_timeout: float = _option(
        60.0,
        "wait this long for the upstream's response head, or for it to take more of the "
        "request while it reads none (then 504)",
        "S",
        group=Group.TIMEOUTS,
    )
    idle_timeout: float = _option(
        300.0,
        "longest silence between upstream body chunks before the stream is cut",
        "S",
        group=Group.TIMEOUTS,
    )
    header_timeout: float = _option(
        10.0,
        "clients must send their request head within this (then 408)",
        "S",
        group=Group.TIMEOUTS,
    )
    send_timeout: float = _option(
        60.0,
        "a client that takes none of the response for this long while the proxy has more "
        "to send is cut, and its upstream closed (as nginx's send_timeout)",
        "S",
        group=Group.TIMEOUTS,
    )
    body_timeout: float = _option(
        10.0,
        "longest silence inside a client's request body (then 408, or both sides cut "
        "once the response has started)",
        "S",
        group=Group.TIMEOUTS,
    )
    retries: int = _option(
        2, "retries of upstream connect failures, only before any byte was sent", "N"
    )
    retry_backoff: float = _option(0.1, "first retry delay, doubling per retry", "S")
    heartbeat: float | None = _option(
        None,
        "send an SSE comment after S idle seconds, between events (off: byte-transparent)",
        "S",
    )
    error_event: bool = _option(
        False, "before cutting a broken SSE stream, send 'event: error' (at an event boundary)"
    )
    api_keys: tuple[str, ...] = ()
    client_tokens: tuple[str, ...] = ()
    admin_tokens: tuple[str, ...] = ()
    upstream_ca: str | None = _option(
        None, "PEM CA bundle to verify an https upstream (default: system trust store)", "FILE"
    )
    upstream_proxy: str | None = _option(
        None, "reach the upstream through this HTTP CONNECT proxy, http://host:port", "URL"
    )
    admin_prefix: str = _option(
        "/_ssekit",
        "path prefix of the proxy's own endpoints: GET PATH/metrics, PATH/health, PATH/ (the "
        "live status page) and PATH/events (its feed) and, with --resume-store, GET and "
        "DELETE PATH/streams/<id>",
        "PATH",
        group=Group.OPERATIONS,
    )
    drain_timeout: float = _option(
        10.0,
        "on SIGTERM/SIGINT, let streams finish this long, then cut them",
        "S",
        group=Group.TIMEOUTS,
    )
    max_header_size: int = _option(
        64 * 1024,
        "largest request head or chunked-body trailer section accepted (then 431), and "
        "upstream response head (then 502)",
        "BYTES",
        group=Group.LIMITS,
    )
    max_header_count: int = _option(
        100,
        "most header lines a request head (or a chunked body's trailer section) may have "
        "(then 431)",
        "N",
        group=Group.LIMITS,
    )
    max_body_size: int = _option(
        64 * 1024 * 1024,
        "largest request body: a longer declared Content-Length is 413 at once, nothing "
        "forwarded; a chunked body passing it is 413 (or cut) and its upstream closed; 0: none",
        "BYTES",
        group=Group.LIMITS,
    )
    request_buffer: int = _option(
        1024 * 1024,
        "read request bodies up to this before connecting upstream (a slow client then "
        "holds no upstream connection; a body read whole goes with its Content-Length); "
        "larger bodies stream on from there; 0: stream every body at once",
        "BYTES",
    )
    underscores_in_headers: bool = _option(
        False,
        "forward request header names containing '_' (default: dropped and counted, as "
        "nginx does: CGI-style origins read X_Forwarded_For as X-Forwarded-For)",
    )
    pool_size: int = _option(32, "idle keep-alive upstream connections kept for reuse", "N")
    max_connections: int = _option(
        1024,
        "concurrent client connections (more get 503); each streaming one also holds an "
        "upstream connection, so the descriptor limit (ulimit -n) must allow twice this",
        "N",
        group=Group.LIMITS,
    )
    log_format: Literal["text", "json"] = _option(
        "text", "one line per request on stderr", group=Group.OPERATIONS
    )
    http: Literal["ssekit", "h11"] = _option(
        "ssekit",
        "HTTP/1.1 engine for both sides, the clients' connections and the upstream's (and "
        "the built-in mock): ssekit's own (fast), or h11, the reference it is held to",
    )
    no_access_log: bool = _option(
        False,
        "log only the requests that failed (the metrics still count every one)",
        group=Group.OPERATIONS,
    )
    # -- resumable streams (ssekit.proxy._resume); off unless resume_store is set --
    resume_store: str | None = _option(
        None,
        "keep every 200 text/event-stream answer so clients can resume it at "
        "GET PATH/streams/<id>: 'memory' (this process) or redis://HOST:PORT/DB "
        "(shared by instances; pip install 'ssekit[redis]')",
        "STORE",
        group=Group.RESUME,
    )
    resume_ttl: float = _option(
        600.0, "how long a stream stays replayable after it ended", "S", group=Group.RESUME
    )
    resume_grace: float = _option(
        30.0,
        "how long an unfinished stream keeps its upstream going with no reader attached "
        "(then the upstream is closed and the stream cut)",
        "S",
        group=Group.RESUME,
    )
    resume_max_bytes: int = _option(
        8 * 1024 * 1024,
        "stored bytes per stream; past it the stream goes on for whoever is attached but is "
        "no longer resumable",
        "BYTES",
        group=Group.RESUME,
    )
    resume_memory_limit: int = _option(
        256 * 1024 * 1024,
        "bytes all streams of the memory store may hold; past it the oldest finished go first",
        "BYTES",
        group=Group.RESUME,
    )
    # -- usage and cost (ssekit.proxy._usage) --
    include_usage: bool = _option(
        False,
        "add stream_options.include_usage to streamed Chat Completions requests that lack it, "
        "so the provider reports usage (in a last chunk, and 'usage': null on each other)",
        group=Group.USAGE,
    )
    on_client_disconnect: Literal["cancel", "finish"] = _option(
        "cancel",
        "when a client leaves mid-stream: cancel (close the upstream: the provider stops "
        "generating) or finish (read the upstream to its end, writing nowhere, within "
        "--finish-timeout, so its final usage is read and logged)",
        group=Group.USAGE,
    )
    finish_timeout: float = _option(
        60.0,
        "with --on-client-disconnect finish: the longest an upstream is read on after its "
        "client left (then closed: partial)",
        "S",
        group=Group.USAGE,
    )
    usage_log: str | None = _option(
        None,
        "append one JSON line per exchange (key, model, tokens, usage source, outcome...) "
        "to FILE ('-': stdout); reopened on SIGHUP; a failed write is logged and counted",
        "FILE",
        group=Group.USAGE,
    )
    usage_max_models: int = _option(
        50,
        "distinct model labels in ssekit_tokens_total; models beyond are counted as 'other'",
        "N",
        group=Group.USAGE,
    )
    #: Labels of ``api_keys`` and ``client_tokens`` (same lengths, or empty: key1, key2...).
    api_key_labels: tuple[str, ...] = ()
    client_token_labels: tuple[str, ...] = ()

    # -- recording (ssekit.proxy._record); off unless record is set --
    record: str | None = _option(
        None,
        "write every exchange as a cassette file in DIR (request, response head, each body "
        "chunk with its arrival time, how it ended) for ssekit mock-upstream --replay and "
        "ssekit.replay; secrets redacted; a slow or full disk drops the recording, never "
        "the stream",
        "DIR",
        group=Group.OPERATIONS,
    )
    record_redact: tuple[str, ...] = ()

    #: ``upstream`` parsed, once (a bad URL fails at construction, not per request).
    origin: Origin = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "origin", Origin.from_url(self.upstream))
        if self.upstream_proxy is not None:
            proxy = Origin.from_url(self.upstream_proxy)
            if proxy.scheme != "http":
                raise ConfigError(
                    f"upstream proxy {self.upstream_proxy!r} must be http://host:port "
                    "(an HTTP CONNECT proxy)"
                )
        for name in (
            "connect_timeout",
            "first_byte_timeout",
            "idle_timeout",
            "header_timeout",
            "body_timeout",
            "send_timeout",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be a positive number of seconds")
        if self.heartbeat is not None and not self.heartbeat > 0:
            raise ConfigError("heartbeat must be a positive number of seconds, or None for off")
        if self.retries < 0 or self.retry_backoff < 0 or self.drain_timeout < 0:
            raise ConfigError("retries, retry_backoff and drain_timeout must not be negative")
        if not 0 <= self.listen_port <= 65535:
            raise ConfigError(f"listen port {self.listen_port} is not in 0-65535")
        if self.max_header_size < 1024 or self.pool_size < 0 or self.max_connections < 1:
            raise ConfigError("max_header_size >= 1024, pool_size >= 0, max_connections >= 1")
        if self.max_header_count < 1 or self.max_body_size < 0 or self.request_buffer < 0:
            raise ConfigError(
                "max_header_count must be >= 1, max_body_size and request_buffer >= 0 (0: none)"
            )
        if not self.admin_prefix.startswith("/") or self.admin_prefix.endswith("/"):
            raise ConfigError(
                f"admin prefix {self.admin_prefix!r} must start with / and not end with /"
            )
        for name in ("api_keys", "client_tokens", "admin_tokens"):
            values = getattr(self, name)
            if any(not v or v != v.strip() or any(c in v for c in "\r\n,") for v in values):
                raise ConfigError(
                    f"{name} must be non-empty single-line strings without commas or "
                    "surrounding spaces"
                )
        self._check_resume()
        self._check_usage()
        check_engine(self.http)
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log format {self.log_format!r} is not text or json")

    def _check_resume(self) -> None:
        store = self.resume_store
        if store is not None and store != "memory":
            scheme, _, rest = store.partition("://")
            if scheme not in ("redis", "rediss") or not rest:
                raise ConfigError(f"resume store {store!r} is not 'memory' or redis://HOST:PORT/DB")
        if not self.resume_ttl > 0 or not self.resume_grace >= 0:
            raise ConfigError("resume_ttl must be positive and resume_grace not negative")
        if self.resume_max_bytes < 1 or self.resume_memory_limit < self.resume_max_bytes:
            raise ConfigError(
                "resume_max_bytes must be >= 1 and resume_memory_limit >= resume_max_bytes"
            )

    def _check_usage(self) -> None:
        if self.on_client_disconnect not in ("cancel", "finish"):
            raise ConfigError(
                f"on_client_disconnect {self.on_client_disconnect!r} is not cancel or finish"
            )
        if not self.finish_timeout > 0 or self.usage_max_models < 1:
            raise ConfigError("finish_timeout must be positive and usage_max_models >= 1")
        for labels, values, name in (
            (self.api_key_labels, self.api_keys, "api_key_labels"),
            (self.client_token_labels, self.client_tokens, "client_token_labels"),
        ):
            if labels and len(labels) != len(values):
                raise ConfigError(f"{name} must give one label per value")

    def key_label(self, index: int) -> str:
        """The label of ``api_keys[index]``."""
        return self.api_key_labels[index] if self.api_key_labels else f"key{index + 1}"

    def client_label(self, index: int) -> str:
        """The label of ``client_tokens[index]``."""
        return self.client_token_labels[index] if self.client_token_labels else f"token{index + 1}"

    @property
    def proxy_origin(self) -> Origin | None:
        return None if self.upstream_proxy is None else Origin.from_url(self.upstream_proxy)


def token_index(token: str, tokens: tuple[str, ...]) -> int | None:
    """Which of ``tokens`` ``token`` is (compared in constant time, every one), or None."""
    given = token.encode()
    found = None
    for i, candidate in enumerate(tokens):
        if hmac.compare_digest(given, candidate.encode()) and found is None:
            found = i
    return found


def token_matches(token: str, tokens: tuple[str, ...]) -> bool:
    """True when ``token`` is one of ``tokens``, compared in constant time.

    Every candidate is compared (no early exit), so timing tells nothing about
    which one nearly matched.
    """
    given = token.encode()
    found = False
    for candidate in tokens:
        found |= hmac.compare_digest(given, candidate.encode())
    return found
