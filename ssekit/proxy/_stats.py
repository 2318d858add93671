"""Per-stream figures, how a stream ended, and the process-wide metrics."""

from __future__ import annotations

import enum
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ._histograms import Histograms
from ._usage import Shape, UsageCounters, UsageSource

__all__ = ("Metrics", "Outcome", "StreamStats")


def report(level: int, text: str, fields: dict[str, object], *, as_json: bool) -> None:
    """Log what the proxy has to say about itself (a store outage, accepts failing) on
    logger ``ssekit.proxy``: ``text`` for people (one JSON object with ``fields`` and
    ``message`` under ``--log-format json``), ``fields`` on the record as ``ssekit``."""
    message = json.dumps({**fields, "message": text}, ensure_ascii=False) if as_json else text
    logging.getLogger("ssekit.proxy").log(level, message, extra={"ssekit": fields})


class Outcome(enum.Enum):
    """How one proxied exchange ended."""

    COMPLETE = "complete"
    CLIENT_DISCONNECT = "client_disconnect"
    UPSTREAM_CUT = "upstream_cut"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_ERROR = "upstream_error"
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    LOCAL = "local"
    OVERLOADED = "overloaded"
    SHUTDOWN = "shutdown"
    INTERNAL_ERROR = "internal_error"


@dataclass(slots=True)
class StreamStats:
    """What one exchange did; times in seconds from the request head's arrival."""

    #: The wall-clock time the request arrived (the stats are made then), for the log line.
    arrived: float = field(default_factory=time.time)
    client: str = ""  # the client's address
    method: str = ""
    path: str = ""
    status: int = 0
    upstream_first_byte: float | None = None
    first_event: float | None = None
    events: int = 0
    body_bytes: int = 0
    done_seen: bool = False
    duration: float = 0.0
    outcome: Outcome = Outcome.COMPLETE
    attempts: int = 0
    error: str = ""
    stream_id: str = ""  # kept for resumption (--resume-store) under this id
    detached: bool = False  # its client left while the stream was kept for resumption
    cut: str = ""  # a resumable stream was cut: why (upstream_failure, grace_expired...)
    not_resumable: str = ""  # an event stream the resume store could not keep: why
    dropped_headers: int = 0  # request fields with "_" in their name, not forwarded
    # -- usage and cost (ssekit.proxy._usage) --
    shape: Shape | None = None  # the LLM API the path speaks; None: usage is not read
    model: str = ""  # the answer's model when it names one, else the request's
    key_label: str = ""  # the upstream API key's label (--api-key-env NAME=VAR, or key<N>)
    client_label: str = ""  # the client token's label (--client-token-env), likewise
    first_token: float | None = None  # the first event carrying content
    usage: UsageSource = UsageSource.NONE
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    partial: bool = False  # the upstream stream did not end complete
    events_delivered: int | None = None  # --on-client-disconnect finish: what the client got
    request_id: str = ""
    # -- the histograms and the status page (_histograms, _status) --
    last_event: float | None = None  # seconds from the request, like first_event
    gaps: list[int] | None = None  # an event stream's gap counts per bucket (the tap's)

    def as_log(self) -> dict[str, object]:
        return {
            "time": utc_time(self.arrived),
            "client": self.client,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "ttfb_ms": _ms(self.upstream_first_byte),
            "first_event_ms": _ms(self.first_event),
            "events": self.events,
            "bytes": self.body_bytes,
            "done": self.done_seen,
            "duration_ms": _ms(self.duration),
            "outcome": self.outcome.value,
            "attempts": self.attempts,
            **(self._usage_log() if self.shape is not None else {}),
            **({"error": self.error} if self.error else {}),
            **({"stream_id": self.stream_id} if self.stream_id else {}),
            **({"detached": True} if self.detached else {}),
            **({"cut": self.cut} if self.cut else {}),
            **({"not_resumable": self.not_resumable} if self.not_resumable else {}),
            **({"dropped_headers": self.dropped_headers} if self.dropped_headers else {}),
        }

    def _usage_log(self) -> dict[str, object]:
        return {
            "model": self.model or None,
            "key": self.key_label or None,
            **({"client_token": self.client_label} if self.client_label else {}),
            "ttft_ms": _ms(self.first_token),
            "usage": self.usage.value,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            **({"partial": True} if self.partial else {}),
            **(
                {"events_delivered": self.events_delivered}
                if self.events_delivered is not None
                else {}
            ),
        }


#: Of the counters summed over workers, the gauges: a dead worker's leave the sum.
_GAUGES = ("active",)
_SUMMED = (
    "events",
    "body_bytes",
    "active",
    "upstream_connects",
    "upstream_reuses",
    "accept_errors",
    "first_event_seconds_sum",
    "first_event_count",
    "resume_recorded",
    "resume_given_up",
    "resume_reads",
    "resume_store_errors",
    "record_cassettes",
    "record_dropped",
    "resume_evicted",
    "dropped_headers",
)


def utc_time(timestamp: float) -> str:
    """ISO 8601 in UTC to the millisecond: ``2026-11-30T12:00:00.123Z``."""
    stamp = datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")
    return stamp.removesuffix("+00:00") + "Z"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


@dataclass(slots=True)
class Metrics:
    """Counters for GET <admin_prefix>/metrics (Prometheus text format)."""

    requests: dict[int, int] = field(default_factory=dict)
    outcomes: dict[Outcome, int] = field(default_factory=dict)
    events: int = 0
    body_bytes: int = 0
    active: int = 0
    upstream_connects: int = 0
    upstream_reuses: int = 0
    accept_errors: int = 0
    first_event_seconds_sum: float = 0.0
    first_event_count: int = 0
    dropped_headers: int = 0
    # Resumable streams (rendered only when a resume store is on).
    resume_on: bool = False
    resume_recorded: int = 0
    resume_given_up: int = 0
    resume_reads: int = 0
    resume_store_errors: int = 0
    #: The HTTP/1.1 engine serving both sides (``--http``), shown as an info gauge.
    engine: str = "ssekit"
    resume_evicted: int = 0
    #: Tokens and exchanges by usage source (ssekit.proxy._usage); ``usage_log``: on.
    usage: UsageCounters = field(default_factory=UsageCounters)
    usage_log: bool = False
    histograms: Histograms = field(default_factory=Histograms)
    #: --record's counts (rendered only when recording): the recorder's, copied in.
    record_on: bool = False
    record_cassettes: int = 0
    record_dropped: int = 0

    def snapshot(self) -> dict[str, object]:
        """The counters as JSON-able data, for another worker process to add up."""
        return {
            "requests": {str(k): v for k, v in self.requests.items()},
            "outcomes": {k.value: v for k, v in self.outcomes.items()},
            **{name: getattr(self, name) for name in _SUMMED},
            "usage": self.usage.snapshot(),
            "histograms": self.histograms.snapshot(),
        }

    @staticmethod
    def retired(snapshot: dict[str, Any]) -> dict[str, Any]:
        """A dead worker's ``snapshot()`` as it stays in the sum: its counters, gauges at 0,
        marked ``retired`` (no process will write it again)."""
        return {**snapshot, **dict.fromkeys(_GAUGES, 0), "retired": True}

    def plus(self, snapshots: Iterable[dict[str, Any]]) -> Metrics:
        """A new Metrics: these counters plus other workers' ``snapshot()`` data."""
        snapshots = list(snapshots)
        total = Metrics(
            requests=dict(self.requests),
            outcomes=dict(self.outcomes),
            resume_on=self.resume_on,
            engine=self.engine,
            usage=self.usage.plus(snap.get("usage", {}) for snap in snapshots),
            usage_log=self.usage_log,
            histograms=self.histograms.copy(),
            record_on=self.record_on,
        )
        for name in _SUMMED:
            setattr(total, name, getattr(self, name))
        for snap in snapshots:
            snap = {name: 0 for name in _SUMMED} | snap  # a sibling without a counter yet
            for status, count in snap["requests"].items():
                total.requests[int(status)] = total.requests.get(int(status), 0) + count
            for outcome, count in snap["outcomes"].items():
                key = Outcome(outcome)
                total.outcomes[key] = total.outcomes.get(key, 0) + count
            for name in _SUMMED:
                setattr(total, name, getattr(total, name) + snap[name])
            total.histograms.add(snap.get("histograms", {}))
        return total

    def record(self, stats: StreamStats) -> None:
        self.requests[stats.status] = self.requests.get(stats.status, 0) + 1
        self.outcomes[stats.outcome] = self.outcomes.get(stats.outcome, 0) + 1
        self.events += stats.events
        self.body_bytes += stats.body_bytes
        self.dropped_headers += stats.dropped_headers
        if stats.first_event is not None:
            self.first_event_seconds_sum += stats.first_event
            self.first_event_count += 1
        self.usage.record(stats)
        # One model label for both: the token counters' (their bound folds the rest to other).
        self.histograms.record(stats, self.usage.model_label(stats.model) if stats.model else "")

    def render(self) -> bytes:
        lines = [
            "# HELP ssekit_requests_total Requests answered, by status.",
            "# TYPE ssekit_requests_total counter",
            *(
                f'ssekit_requests_total{{status="{s}"}} {n}'
                for s, n in sorted(self.requests.items())
            ),
            "# HELP ssekit_streams_total Exchanges by how they ended.",
            "# TYPE ssekit_streams_total counter",
            *(
                f'ssekit_streams_total{{outcome="{o.value}"}} {n}'
                for o, n in sorted(self.outcomes.items(), key=lambda item: item[0].value)
            ),
            "# HELP ssekit_events_total SSE events seen in forwarded event streams.",
            "# TYPE ssekit_events_total counter",
            f"ssekit_events_total {self.events}",
            "# HELP ssekit_bytes_total Response body bytes forwarded to clients.",
            "# TYPE ssekit_bytes_total counter",
            f"ssekit_bytes_total {self.body_bytes}",
            "# HELP ssekit_active_requests Exchanges in flight.",
            "# TYPE ssekit_active_requests gauge",
            f"ssekit_active_requests {self.active}",
            "# HELP ssekit_upstream_connections_total Upstream connections opened.",
            "# TYPE ssekit_upstream_connections_total counter",
            f"ssekit_upstream_connections_total {self.upstream_connects}",
            "# HELP ssekit_upstream_reuses_total Requests sent on a kept-alive connection.",
            "# TYPE ssekit_upstream_reuses_total counter",
            f"ssekit_upstream_reuses_total {self.upstream_reuses}",
            "# HELP ssekit_accept_errors_total Failed accepts (out of descriptors, memory).",
            "# TYPE ssekit_accept_errors_total counter",
            f"ssekit_accept_errors_total {self.accept_errors}",
            "# HELP ssekit_first_event_seconds Time from request to first SSE event.",
            "# TYPE ssekit_first_event_seconds summary",
            f"ssekit_first_event_seconds_sum {self.first_event_seconds_sum:.6f}",
            f"ssekit_first_event_seconds_count {self.first_event_count}",
            "# HELP ssekit_dropped_headers_total Request header fields not forwarded for a "
            "'_' in their name (--underscores-in-headers keeps them).",
            "# TYPE ssekit_dropped_headers_total counter",
            f"ssekit_dropped_headers_total {self.dropped_headers}",
            "# HELP ssekit_http_engine The HTTP/1.1 engine serving both sides (--http).",
            "# TYPE ssekit_http_engine gauge",
            f'ssekit_http_engine{{engine="{self.engine}"}} 1',
            *self.usage.render(self.usage_log),
            *self.histograms.render(),
        ]
        if self.resume_on:
            lines += [
                "# HELP ssekit_resume_streams_total Event streams recorded for resumption.",
                "# TYPE ssekit_resume_streams_total counter",
                f"ssekit_resume_streams_total {self.resume_recorded}",
                "# HELP ssekit_resume_given_up_total Recorded streams that stopped being "
                "resumable (--resume-max-bytes, memory limit, store failures).",
                "# TYPE ssekit_resume_given_up_total counter",
                f"ssekit_resume_given_up_total {self.resume_given_up}",
                "# HELP ssekit_resume_reads_total Resume reads served (GET .../streams/<id>).",
                "# TYPE ssekit_resume_reads_total counter",
                f"ssekit_resume_reads_total {self.resume_reads}",
                "# HELP ssekit_resume_store_errors_total Failed writes or reads of the store.",
                "# TYPE ssekit_resume_store_errors_total counter",
                f"ssekit_resume_store_errors_total {self.resume_store_errors}",
                "# HELP ssekit_resume_evicted_total Streams this instance forwarded whose "
                "keys the store dropped (an evicting Redis maxmemory-policy).",
                "# TYPE ssekit_resume_evicted_total counter",
                f"ssekit_resume_evicted_total {self.resume_evicted}",
            ]
        if self.record_on:
            lines += [
                "# HELP ssekit_record_cassettes_total Exchanges written as cassettes (--record).",
                "# TYPE ssekit_record_cassettes_total counter",
                f"ssekit_record_cassettes_total {self.record_cassettes}",
                "# HELP ssekit_record_dropped_total Recordings dropped (slow or full disk); "
                "their streams went on.",
                "# TYPE ssekit_record_dropped_total counter",
                f"ssekit_record_dropped_total {self.record_dropped}",
            ]
        return ("\n".join(lines) + "\n").encode()
