"""The client's reconnection rules, without sockets or clocks."""

from __future__ import annotations

import pytest

import ssekit
from ssekit.client import CREDENTIAL_HEADERS, Reconnector, RetryPolicy, Verdict
from ssekit.client._policy import credential_names, same_origin

NO_JITTER = RetryPolicy(initial_retry=1000, jitter=0, max_retries=None, min_delay=0)


def test_requests_ask_for_an_event_stream_and_no_cache_as_browsers_do() -> None:
    # The fetch a browser's EventSource makes sends Cache-Control: no-cache.
    headers = dict(Reconnector(NO_JITTER).request_headers())
    assert headers == {b"accept": b"text/event-stream", b"cache-control": b"no-cache"}


def test_last_event_id_is_sent_once_set() -> None:
    reconnector = Reconnector(NO_JITTER)
    reconnector.on_chunk("42", None, events=1)
    assert (b"last-event-id", b"42") in reconnector.request_headers()
    reconnector.on_chunk("", None, events=1)  # an empty id resets it: no header
    assert all(k != b"last-event-id" for k, _ in reconnector.request_headers())


def test_200_event_stream_opens_204_stops_others_fail_without_retry() -> None:
    reconnector = Reconnector(NO_JITTER)
    assert reconnector.on_response(200, "text/event-stream; charset=utf-8").verdict is Verdict.OPEN
    assert reconnector.on_response(204, "").verdict is Verdict.STOP
    failed = reconnector.on_response(503, "application/json", '{"error": "busy"}')
    assert failed.verdict is Verdict.FAIL
    assert isinstance(failed.error, ssekit.ResponseError)
    assert failed.error.status == 503
    assert failed.error.body == '{"error": "busy"}'
    wrong = reconnector.on_response(200, "text/html")
    assert wrong.verdict is Verdict.FAIL
    assert isinstance(wrong.error, ssekit.ResponseError)
    assert (wrong.error.status, wrong.error.content_type) == (200, "text/html")


def test_retry_statuses_reconnect_after_the_reconnection_time_others_still_fail() -> None:
    reconnector = Reconnector(RetryPolicy(initial_retry=1000, jitter=0, retry_statuses=[502, 503]))
    busy = reconnector.on_response(503, "text/html", "<h1>busy</h1>")
    assert busy.verdict is Verdict.RECONNECT
    assert isinstance(busy.error, ssekit.ResponseError)
    assert busy.error.status == 503
    then = reconnector.on_end(now=0, random=0.5, error=busy.error)
    assert then.verdict is Verdict.RECONNECT
    assert then.delay == pytest.approx(1.0)
    assert reconnector.on_response(500, "text/html").verdict is Verdict.FAIL
    assert reconnector.policy.retry_statuses == frozenset({502, 503})
    with pytest.raises(ValueError):  # noqa: PT011 (the type, not the message text)
        RetryPolicy(retry_statuses={200})


def test_clean_end_of_a_get_stream_reconnects_after_the_reconnection_time() -> None:
    reconnector = Reconnector(NO_JITTER)
    reconnector.on_chunk("1", None, events=1)
    decision = reconnector.on_end(now=0, random=0.5)
    assert decision.verdict is Verdict.RECONNECT
    assert decision.delay == pytest.approx(1.0)


def test_retry_field_updates_the_reconnection_time() -> None:
    reconnector = Reconnector(NO_JITTER)
    reconnector.on_chunk("", 250, events=0)
    assert reconnector.on_end(now=0, random=0.5).delay == pytest.approx(0.25)


def test_repeated_failures_back_off_exponentially_up_to_the_cap() -> None:
    policy = RetryPolicy(initial_retry=1000, backoff=2, max_delay=5000, jitter=0, max_retries=None)
    reconnector = Reconnector(policy)
    error = ssekit.UpstreamError("refused")
    delays = [reconnector.on_end(now=0, random=0.5, error=error).delay for _ in range(6)]
    assert delays == pytest.approx([1, 2, 4, 5, 5, 5])
    reconnector.on_chunk("9", None, events=1)  # an event arrived: failures start over
    assert reconnector.on_end(now=0, random=0.5).delay == pytest.approx(1)


@pytest.mark.parametrize("random", [0.0, 0.25, 0.999])
def test_jitter_stays_within_its_fraction(random: float) -> None:
    reconnector = Reconnector(RetryPolicy(initial_retry=1000, jitter=0.2, max_retries=None))
    delay = reconnector.on_end(now=0, random=random).delay
    assert 0.8 <= delay <= 1.2
    assert delay == pytest.approx(1 + 0.2 * (2 * random - 1))


def test_max_retries_gives_up_with_the_last_error() -> None:
    reconnector = Reconnector(RetryPolicy(max_retries=2, jitter=0))
    error = ssekit.UpstreamError("connection refused")
    assert reconnector.on_end(now=0, random=0, error=error).verdict is Verdict.RECONNECT
    assert reconnector.on_end(now=0, random=0, error=error).verdict is Verdict.RECONNECT
    final = reconnector.on_end(now=0, random=0, error=error)
    assert final.verdict is Verdict.FAIL
    assert isinstance(final.error, ssekit.RetriesExhausted)
    assert final.error.__cause__ is error
    assert final.error.reconnections == 2


def test_deadline_fails_instead_of_waiting_past_it() -> None:
    reconnector = Reconnector(RetryPolicy(initial_retry=2000, jitter=0, deadline=5), now=100)
    assert reconnector.on_end(now=101, random=0).verdict is Verdict.RECONNECT
    final = reconnector.on_end(now=103.5, random=0)  # 103.5 + 4 > 105
    assert final.verdict is Verdict.FAIL
    assert isinstance(final.error, ssekit.RetriesExhausted)
    assert final.error.reconnections == 1  # not max_retries (10): the deadline


def test_post_is_not_replayed_unless_opted_in() -> None:
    cut = ssekit.UpstreamError("cut")
    post = Reconnector(NO_JITTER, method="post")
    assert post.on_end(now=0, random=0).verdict is Verdict.STOP
    failed = post.on_end(now=0, random=0, error=cut)
    assert failed.verdict is Verdict.FAIL
    assert type(failed.error) is ssekit.ClientError  # not retries exhausted: never retried
    assert failed.error.__cause__ is cut
    replay = Reconnector(RetryPolicy(replay_post=True, jitter=0), method="POST")
    assert replay.on_end(now=0, random=0, error=cut).verdict is Verdict.RECONNECT


def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (the type, not the message text)
        RetryPolicy(jitter=1.5)
    with pytest.raises(ValueError):  # noqa: PT011
        RetryPolicy(backoff=0.5)


def test_only_a_dispatched_event_is_progress() -> None:
    # A server that sends a comment (or a retry or id alone) and cuts is failing:
    # the backoff must keep growing and max_retries must still bound it.
    reconnector = Reconnector(RetryPolicy(initial_retry=100, jitter=0, max_retries=3, min_delay=0))
    delays = []
    for _ in range(3):
        reconnector.on_chunk("7", 100, events=0)  # ": ping", "id: 7", "retry: 100": no event
        delays.append(reconnector.on_end(now=0, random=0).delay)
    assert delays == pytest.approx([0.1, 0.2, 0.4])
    assert reconnector.last_event_id == "7"  # the state is kept all the same
    final = reconnector.on_end(now=0, random=0)
    assert isinstance(final.error, ssekit.RetriesExhausted)
    reconnector.on_chunk("8", None, events=1)
    assert reconnector.on_end(now=0, random=0).verdict is Verdict.RECONNECT


def test_the_storm_guards_are_on_by_default() -> None:
    # The floor Firefox puts under retry:, and at most 60 reconnections a minute.
    policy = RetryPolicy()
    assert (policy.min_delay, policy.max_reconnects, policy.reconnect_window) == (500, 60, 60.0)


def test_retry_0_waits_the_floor_and_backs_off_from_it() -> None:
    reconnector = Reconnector(RetryPolicy(jitter=0, max_retries=None))
    reconnector.on_chunk("", 0, events=0)  # "retry: 0", then cut without an event
    error = ssekit.UpstreamError("cut")
    delays = [reconnector.on_end(now=0, random=0.5, error=error).delay for _ in range(4)]
    assert delays == pytest.approx([0.5, 1, 2, 4])  # 0 doubled would stay 0
    reconnector.on_chunk("", 0, events=1)  # progress: the backoff starts over, at the floor
    assert reconnector.on_end(now=0, random=0.5).delay == pytest.approx(0.5)


@pytest.mark.parametrize("random", [0.0, 0.5, 0.999])
def test_jitter_never_takes_a_delay_under_the_floor(random: float) -> None:
    reconnector = Reconnector(RetryPolicy(jitter=0.5, min_delay=200, max_retries=None))
    reconnector.on_chunk("", 0, events=1)
    assert reconnector.on_end(now=0, random=random).delay >= 0.2


def test_reconnections_per_window_are_capped_even_when_each_brings_an_event() -> None:
    # A server that sends retry: 0, one event, and closes makes progress on every
    # connection: the failure count never grows, so only the window slows it.
    policy = RetryPolicy(min_delay=0, max_reconnects=3, reconnect_window=10, max_retries=2)
    reconnector = Reconnector(policy)
    now, starts = 0.0, []
    for _ in range(20):
        reconnector.on_chunk("", 0, events=1)
        decision = reconnector.on_end(now=now, random=0.5)
        assert decision.verdict is Verdict.RECONNECT  # never gives up: events came
        now += decision.delay
        starts.append(now)
        now += 0.001  # the connection: one event, then closed
    assert all(later - earlier >= 10 for earlier, later in zip(starts, starts[3:], strict=False))
    assert starts[-1] >= 10 * (20 // 3 - 1)


def test_without_a_cap_the_floor_alone_bounds_the_rate() -> None:
    reconnector = Reconnector(RetryPolicy(jitter=0, max_reconnects=None, max_retries=None))
    for _ in range(100):
        reconnector.on_chunk("", 0, events=1)
        assert reconnector.on_end(now=0, random=0.5).delay == pytest.approx(0.5)


@pytest.mark.parametrize(
    "fields",
    [
        {"min_delay": -1},
        {"min_delay": 70_000},  # over max_delay
        {"max_reconnects": 0},
        {"reconnect_window": 0},
    ],
)
def test_bad_storm_guards_are_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (the type, not the message text)
        RetryPolicy(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (("http", "api.test", None), ("http", "API.test", 80), True),  # default port, any case
        (("https", "api.test", 443), ("https", "api.test", None), True),
        (("http", "api.test", None), ("https", "api.test", None), False),  # scheme
        (("https", "api.test", None), ("https", "evil.test", None), False),  # host
        (("http", "127.0.0.1", 8000), ("http", "127.0.0.1", 8001), False),  # port
    ],
)
def test_origins_are_scheme_host_and_port(
    a: tuple[str, str, int | None], b: tuple[str, str, int | None], same: bool
) -> None:
    assert same_origin(a, b) is same


def test_credential_names_add_the_callers_to_the_known_ones() -> None:
    assert CREDENTIAL_HEADERS == {
        "authorization",
        "proxy-authorization",
        "cookie",
        "api-key",
        "x-api-key",
    }
    assert credential_names(["X-My-Token"]) == CREDENTIAL_HEADERS | {"x-my-token"}
    with pytest.raises(ssekit.InputTypeError):
        credential_names("x-my-token")
