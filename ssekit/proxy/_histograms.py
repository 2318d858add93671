"""Prometheus histograms of every stream's life: latencies, gaps, length.

Buckets are chosen for streams: a millisecond (a cached answer, a local model's
next token) up to ten minutes (a long generation). Each exchange is observed
once, when it ends, under the labels it ended with (``outcome``, and ``model``
and ``key`` when the usage ledger named them), so the gap between events of a
stream still open is not in the histograms yet. The one observation made while
a stream flows, the gap between two events, costs the tap one bisect into
:data:`SECONDS` per upstream read that completed events (events completed by one
read arrived together: gap 0); the per-stream counts join the histogram at the end.

Sums over ``--workers`` go through :meth:`Histograms.snapshot` and
:meth:`Histograms.add`, as the counters of :class:`~._stats.Metrics` do.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ._stats import StreamStats

__all__ = (
    "EVENTS",
    "MEASURES",
    "OPENMETRICS",
    "SECONDS",
    "Histograms",
    "Measure",
    "new_gaps",
    "openmetrics",
    "wants_openmetrics",
)

#: Upper bounds (``le``) of the time buckets, seconds: 1 ms to 10 minutes.
SECONDS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
#: Upper bounds of the events-per-stream buckets.
EVENTS: Final = (
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0,
    1000.0, 2500.0, 5000.0, 10000.0, 25000.0, 100000.0,
)  # fmt: skip

#: Distinct (model, key) label pairs kept; past this, new pairs are counted as "other"
#: so that a client naming endless models cannot grow the exposition without bound.
MAX_LABEL_PAIRS: Final = 200
OTHER: Final = "other"


@dataclass(frozen=True, slots=True)
class Measure:
    """One histogram: its metric name, help text and bucket bounds."""

    name: str
    help: str
    bounds: tuple[float, ...]


TTFB: Final = Measure(
    "ssekit_time_to_first_byte_seconds",
    "Time from the request's arrival to the upstream's response head.",
    SECONDS,
)
FIRST_EVENT: Final = Measure(
    "ssekit_time_to_first_event_seconds",
    "Time from the request's arrival to the first SSE event forwarded.",
    SECONDS,
)
FIRST_TOKEN: Final = Measure(
    "ssekit_time_to_first_token_seconds",
    "Time from the request's arrival to the first event carrying generated text.",
    SECONDS,
)
GAP: Final = Measure(
    "ssekit_event_gap_seconds",
    "Time between two consecutive SSE events of a stream (counted when it ends).",
    SECONDS,
)
DURATION: Final = Measure(
    "ssekit_stream_duration_seconds",
    "Time from the request's arrival to the end of the exchange.",
    SECONDS,
)
STREAM_EVENTS: Final = Measure(
    "ssekit_stream_events",
    "SSE events per forwarded event stream.",
    EVENTS,
)
#: Every histogram, in the order rendered.
MEASURES: Final = (TTFB, FIRST_EVENT, FIRST_TOKEN, GAP, DURATION, STREAM_EVENTS)


def new_gaps() -> list[int]:
    """A stream's own gap counts: one per :data:`SECONDS` bucket, the last for +Inf."""
    return [0] * (len(SECONDS) + 1)


Labels = tuple[str, str, str]  # outcome, model, key


@dataclass(slots=True)
class _Series:
    counts: list[int]  # per bucket (not cumulative), the last one for +Inf
    total: float = 0.0


@dataclass(slots=True)
class Histograms:
    """Every measure's series, by (outcome, model, key)."""

    series: dict[str, dict[Labels, _Series]] = field(
        default_factory=lambda: {m.name: {} for m in MEASURES}
    )
    _pairs: set[tuple[str, str]] = field(default_factory=set)

    def record(self, stats: StreamStats, model: str) -> None:
        """Observe one ended exchange (the proxy's own answers are not streams: skipped);
        ``model`` is its model label as the token counters have it (``other`` past their
        bound)."""
        outcome = stats.outcome.value
        if outcome == "local":
            return
        labels = (outcome, *self._pair(model, stats.key_label))
        if stats.upstream_first_byte is not None:
            self._observe(TTFB, labels, stats.upstream_first_byte)
        if stats.first_event is not None:
            self._observe(FIRST_EVENT, labels, stats.first_event)
        if stats.first_token is not None:
            self._observe(FIRST_TOKEN, labels, stats.first_token)
        self._observe(DURATION, labels, stats.duration)
        if stats.gaps is not None:  # an event stream the tap watched
            self._observe(STREAM_EVENTS, labels, float(stats.events))
            series = self._series(GAP, labels)
            for index, count in enumerate(stats.gaps):
                series.counts[index] += count
            if stats.first_event is not None and stats.last_event is not None:
                series.total += stats.last_event - stats.first_event  # every gap, summed

    def _pair(self, model: str, key: str) -> tuple[str, str]:
        pair = (model, key)
        if pair in self._pairs or pair == ("", ""):
            return pair
        if len(self._pairs) >= MAX_LABEL_PAIRS:
            return (OTHER if model else "", OTHER if key else "")
        self._pairs.add(pair)
        return pair

    def _series(self, measure: Measure, labels: Labels) -> _Series:
        table = self.series[measure.name]
        series = table.get(labels)
        if series is None:
            series = table[labels] = _Series([0] * (len(measure.bounds) + 1))
        return series

    def _observe(self, measure: Measure, labels: Labels, value: float) -> None:
        series = self._series(measure, labels)
        series.counts[_bucket(measure.bounds, value)] += 1
        series.total += value

    def snapshot(self) -> dict[str, list[list[Any]]]:
        """JSON-able: per measure, ``[outcome, model, key, counts, sum]`` rows."""
        return {
            name: [[*labels, s.counts, s.total] for labels, s in table.items()]
            for name, table in self.series.items()
        }

    def copy(self) -> Histograms:
        total = Histograms()
        total.add(self.snapshot())
        return total

    def add(self, snapshot: dict[str, list[list[Any]]]) -> None:
        """Add another worker's :meth:`snapshot` (a measure this one lacks is skipped)."""
        measures = {m.name: m for m in MEASURES}
        for name, rows in snapshot.items():
            measure = measures.get(name)
            if measure is None:
                continue
            for outcome, model, key, counts, total in rows:
                series = self._series(measure, (str(outcome), str(model), str(key)))
                for index, count in enumerate(counts[: len(series.counts)]):
                    series.counts[index] += int(count)
                series.total += float(total)

    def render(self) -> list[str]:
        """Prometheus text exposition lines, one histogram family per measure."""
        lines: list[str] = []
        for measure in MEASURES:
            lines += [f"# HELP {measure.name} {measure.help}", f"# TYPE {measure.name} histogram"]
            bounds = [_le(b) for b in measure.bounds] + ["+Inf"]
            for labels, series in sorted(self.series[measure.name].items()):
                names = _labels(labels)
                cumulative = 0
                for le, count in zip(bounds, series.counts, strict=True):
                    cumulative += count
                    lines.append(f'{measure.name}_bucket{{{names}le="{le}"}} {cumulative}')
                plain = names.rstrip(",")
                lines.append(f"{measure.name}_sum{{{plain}}} {series.total:.6f}")
                lines.append(f"{measure.name}_count{{{plain}}} {cumulative}")
        return lines


def _bucket(bounds: tuple[float, ...], value: float) -> int:
    """The index of the first bucket whose bound is >= value (le semantics)."""
    return bisect_left(bounds, value)


def _le(bound: float) -> str:
    return repr(float(bound))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    """``outcome="x",model="y",key="z",`` with empty labels left out (trailing comma)."""
    outcome, model, key = labels
    text = f'outcome="{_escape(outcome)}",'
    if model:
        text += f'model="{_escape(model)}",'
    if key:
        text += f'key="{_escape(key)}",'
    return text


#: The media type of :func:`openmetrics`, asked for with ``Accept``.
OPENMETRICS: Final = b"application/openmetrics-text; version=1.0.0; charset=utf-8"


def wants_openmetrics(accept: bytes | None) -> bool:
    """True when a scraper's ``Accept`` names OpenMetrics text (Prometheus sends it first)."""
    return accept is not None and b"application/openmetrics-text" in accept.lower()


def openmetrics(text: bytes) -> bytes:
    """The Prometheus text exposition as OpenMetrics 1.0: a counter family is named
    without its samples' ``_total``, and the exposition ends with ``# EOF``."""
    lines = text.decode().splitlines()
    counters = {
        line.split()[2]
        for line in lines
        if line.startswith("# TYPE ") and line.endswith(" counter") and "_total " in line
    }
    out = []
    for line in lines:
        if line.startswith(("# HELP ", "# TYPE ")):
            kind, name, rest = line[2:6], line.split()[2], line.split(" ", 3)[3]
            if name in counters:
                line = f"# {kind} {name.removesuffix('_total')} {rest}"
        out.append(line)
    return ("\n".join(out) + "\n# EOF\n").encode()
