"""The stream histograms on /_ssekit/metrics, read with prometheus_client's own parser."""

from __future__ import annotations

import math
import re
import signal
import time
from pathlib import Path

import anyio
import httpx
import pytest
from _procs import finish, listening, spawn
from _servers import SSE_HEAD, Seen, chunk, deadline, start_mock, start_proxy, start_upstream
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from ssekit.proxy._histograms import EVENTS, MEASURES, SECONDS, Histograms
from ssekit.proxy._stats import Metrics, Outcome, StreamStats
from ssekit.proxy._usage import Shape, UsageCounters, UsageSource

CHAT = {"stream": True, "messages": [{"role": "user", "content": "hi"}]}
HISTOGRAMS = {
    "ssekit_time_to_first_byte_seconds": SECONDS,
    "ssekit_time_to_first_event_seconds": SECONDS,
    "ssekit_time_to_first_token_seconds": SECONDS,
    "ssekit_event_gap_seconds": SECONDS,
    "ssekit_stream_duration_seconds": SECONDS,
    "ssekit_stream_events": EVENTS,
}


def families(text: str) -> dict[str, list[Sample]]:
    """name -> samples of each histogram family, checked to be a well-formed histogram:
    the type, le buckets ascending and cumulative per label set, +Inf equal to _count."""
    found = {}
    for family in text_string_to_metric_families(text):
        if family.name in HISTOGRAMS:
            assert family.type == "histogram", family
            found[family.name] = family.samples
            check_histogram(family.name, family.samples)
    assert set(found) == set(HISTOGRAMS)
    return found


def check_histogram(name: str, samples: list[Sample]) -> None:
    series: dict[tuple[tuple[str, str], ...], list[Sample]] = {}
    for sample in samples:
        key = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
        series.setdefault(key, []).append(sample)
    for key, group in series.items():
        buckets = [s for s in group if s.name == name + "_bucket"]
        bounds = [float(s.labels["le"]) for s in buckets]
        assert bounds == [*HISTOGRAMS[name], math.inf], (name, key)
        values = [s.value for s in buckets]
        assert values == sorted(values), (name, key, values)  # cumulative
        (count,) = [s.value for s in group if s.name == name + "_count"]
        (total,) = [s.value for s in group if s.name == name + "_sum"]
        assert values[-1] == count
        assert total >= 0


def value(samples: list[Sample], suffix: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples
        if s.name == name + suffix and all(s.labels.get(k) == v for k, v in labels.items())
    )


def bucket(samples: list[Sample], name: str, le: str, **labels: str) -> float:
    return value(samples, "_bucket", name, le=le, **labels)


def test_the_histograms_observe_an_exchange_under_its_outcome_and_labels() -> None:
    hist = Histograms()
    stats = StreamStats(
        upstream_first_byte=0.02, first_event=0.03, first_token=0.2, duration=1.5,
        events=4, gaps=[0] * (len(SECONDS) + 1), last_event=1.23, model="gpt-x", key_label="team-a",
    )  # fmt: skip
    assert stats.gaps is not None
    stats.gaps[0] += 1  # two events of one read
    stats.gaps[SECONDS.index(1.0)] += 2
    stats.outcome = Outcome.UPSTREAM_CUT
    hist.record(stats, stats.model)
    hist.record(StreamStats(outcome=Outcome.LOCAL, duration=0.001), "")  # own: not streams
    metrics = Metrics()
    metrics.histograms = hist
    found = families(metrics.render().decode())
    labels = {"outcome": "upstream_cut", "model": "gpt-x", "key": "team-a"}
    name = "ssekit_time_to_first_byte_seconds"
    assert bucket(found[name], name, "0.01", **labels) == 0
    assert bucket(found[name], name, "0.025", **labels) == 1
    name = "ssekit_time_to_first_token_seconds"
    assert bucket(found[name], name, "0.1", **labels) == 0
    assert bucket(found[name], name, "0.25", **labels) == 1
    name = "ssekit_event_gap_seconds"
    assert bucket(found[name], name, "0.001", **labels) == 1
    assert bucket(found[name], name, "1.0", **labels) == 3
    assert value(found[name], "_sum", name, **labels) == pytest.approx(1.2)
    name = "ssekit_stream_events"
    assert bucket(found[name], name, "2.0", **labels) == 0
    assert bucket(found[name], name, "5.0", **labels) == 1
    name = "ssekit_stream_duration_seconds"
    assert value(found[name], "_count", name) == 1  # the local answer is not a stream


def test_histograms_add_up_over_snapshots_as_workers_leave_them() -> None:
    one, two = Metrics(), Metrics()
    for metrics, duration in ((one, 0.4), (two, 40.0)):
        metrics.record(StreamStats(duration=duration, outcome=Outcome.COMPLETE))
    total = one.plus([two.snapshot(), Metrics.retired(two.snapshot())])
    found = families(total.render().decode())
    name = "ssekit_stream_duration_seconds"
    assert bucket(found[name], name, "0.5", outcome="complete") == 1
    assert bucket(found[name], name, "+Inf", outcome="complete") == 3
    assert value(found[name], "_sum", name, outcome="complete") == pytest.approx(80.4)
    assert len(MEASURES) == len(HISTOGRAMS)


def test_label_pairs_past_the_bound_are_counted_as_other() -> None:
    hist = Histograms()
    for n in range(300):
        hist.record(StreamStats(model=f"m{n}", key_label="k", duration=0.1), f"m{n}")
    labels = {labels[1] for labels in hist.series["ssekit_stream_duration_seconds"]}
    assert len(labels) == 201
    assert "other" in labels


def test_histograms_label_models_as_the_token_counters_do() -> None:
    """Past --usage-max-models the token counters say other; so do the histograms."""
    metrics = Metrics(usage=UsageCounters(max_models=2))
    for model in ("a", "b", "c"):
        stats = StreamStats(model=model, key_label="k", duration=0.1, shape=Shape.CHAT)
        stats.usage, stats.prompt_tokens, stats.completion_tokens = UsageSource.REPORTED, 1, 1
        metrics.record(stats)
    text = metrics.render().decode()
    name = "ssekit_stream_duration_seconds"
    models = {s.labels["model"] for s in families(text)[name] if s.name == name + "_count"}
    (counter,) = (f for f in text_string_to_metric_families(text) if f.name == "ssekit_tokens")
    tokens = {s.labels["model"] for s in counter.samples}
    assert models == tokens == {"a", "b", "other"}


@pytest.mark.anyio
async def test_streams_through_the_proxy_fill_the_histograms() -> None:
    async def cut_after_three(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD)
        for n in range(3):
            await stream.send(chunk(b"data: %d\n\n" % n))
            await anyio.sleep(0.02)

    async with deadline(30) as tg:
        mock = await start_mock(tg, tokens=5, delay=0.01)
        base = await start_proxy(tg, mock)
        cutting, _ = await start_upstream(tg, cut_after_three)
        cut_base = await start_proxy(tg, cutting)
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(3):
                r = await client.post(base + "/v1/chat/completions", json=CHAT)
                assert r.status_code == 200
            with pytest.raises(httpx.HTTPError):
                await client.get(cut_base + "/v1/x")
            text = (await client.get(base + "/_ssekit/metrics")).text
            cut_text = (await client.get(cut_base + "/_ssekit/metrics")).text
    found = families(text)
    events = 5 + 3  # role, 5 tokens, stop, [DONE]
    name = "ssekit_stream_events"
    assert value(found[name], "_count", name, outcome="complete") == 3
    assert value(found[name], "_sum", name, outcome="complete") == 3 * events
    name = "ssekit_event_gap_seconds"
    assert value(found[name], "_count", name, outcome="complete") == 3 * (events - 1)
    name = "ssekit_time_to_first_event_seconds"
    assert value(found[name], "_count", name, outcome="complete") == 3
    first = value(found[name], "_sum", name, outcome="complete")
    name = "ssekit_stream_duration_seconds"
    assert value(found[name], "_count", name, outcome="local") == 0
    assert value(found[name], "_sum", name, outcome="complete") > first + 3 * 5 * 0.01
    found = families(cut_text)
    name = "ssekit_stream_events"
    assert value(found[name], "_sum", name, outcome="upstream_cut") == 3
    name = "ssekit_time_to_first_byte_seconds"
    assert value(found[name], "_count", name, outcome="upstream_cut") == 1


def test_histograms_are_summed_over_two_workers() -> None:
    mock = spawn("mock-upstream", "--listen", "127.0.0.1:0", "--delay", "0.05")
    try:
        upstream = listening(mock, "mock")
        proc = spawn("proxy", "--upstream", upstream, "--listen", "127.0.0.1:0", "--workers", "2")
        try:
            base = listening(proc, "proxy")
            with httpx.Client(timeout=20) as client:
                # New connections each: SO_REUSEPORT spreads them over both workers.
                for _ in range(8):
                    with httpx.Client(timeout=20) as one:
                        r = one.post(base + "/v1/chat/completions", json={**CHAT, "max_tokens": 3})
                        assert r.status_code == 200
                time.sleep(1.5)  # each worker leaves its counters every second
                texts = [client.get(base + "/_ssekit/metrics").text for _ in range(4)]
        finally:
            proc.send_signal(signal.SIGTERM)
            finish(proc)
    finally:
        mock.kill()
        finish(mock)
    for text in texts:  # whichever worker answered, the sum over both
        found = families(text)
        name = "ssekit_stream_events"
        assert value(found[name], "_count", name, outcome="complete") == 8
        assert value(found[name], "_sum", name, outcome="complete") == 8 * (3 + 3)
        name = "ssekit_stream_duration_seconds"
        assert bucket(found[name], name, "+Inf", outcome="complete") == 8


def test_the_readme_lists_every_metric() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `(ssekit_[a-z_]+)", readme, re.MULTILINE))
    rendered = Metrics(resume_on=True).render().decode()
    for family in text_string_to_metric_families(rendered):
        name = family.name + ("_total" if family.type == "counter" else "")
        assert name in listed, name


@pytest.mark.anyio
async def test_openmetrics_is_served_when_the_scraper_asks_for_it() -> None:
    async with deadline(30) as tg:
        mock = await start_mock(tg, tokens=2, delay=0.001)
        base = await start_proxy(tg, mock)
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.post(base + "/v1/chat/completions", json=CHAT)).status_code == 200
            accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            r = await client.get(base + "/_ssekit/metrics", headers={"accept": accept})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    found = {f.name: f for f in openmetrics_families(r.text)}
    assert found["ssekit_streams"].type == "counter"
    (sample,) = [s for s in found["ssekit_streams"].samples if s.labels["outcome"] == "complete"]
    assert sample.name == "ssekit_streams_total"
    assert sample.value == 1
    name = "ssekit_stream_events"
    assert found[name].type == "histogram"
    check_histogram(name, found[name].samples)
    assert value(found[name].samples, "_sum", name, outcome="complete") == 2 + 3
