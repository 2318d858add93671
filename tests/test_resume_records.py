"""The pure rules of resumable streams: ids, keys, positions, what a resume request gets."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import example, given

import ssekit
from ssekit.proxy._resume._records import (
    PROBE_FIRST,
    PROBE_MAX,
    STEADY,
    CatchUp,
    Outage,
    Refusal,
    Replay,
    State,
    StreamInfo,
    event_body,
    frame,
    grace_expired,
    new_stream_id,
    owner_lost,
    pieces,
    plan_resume,
    redacted,
    scoped_key,
    start_position,
    valid_key,
)


def info(count: int = 5, **changes: object) -> StreamInfo:
    fields: dict[str, object] = {
        "key": "-/abc",
        "run": "r1",
        "state": State.LIVE,
        "count": count,
        "owner": "o1",
    }
    fields.update(changes)
    return StreamInfo(**fields)  # type: ignore[arg-type]


# -- ids and keys --------------------------------------------------------------------


def test_a_stream_id_is_128_bits_in_url_safe_base64() -> None:
    stream_id = new_stream_id(bytes(range(16)))
    assert stream_id == "AAECAwQFBgcICQoLDA0ODw"
    assert valid_key(stream_id)
    with pytest.raises(ValueError):  # noqa: PT011 (the type, not the message text)
        new_stream_id(b"short")


@pytest.mark.parametrize("key", ["a", "A-z_0.9~", "x" * 128, "msg-42.answer"])
def test_keys_of_unreserved_characters_up_to_128_are_valid(key: str) -> None:
    assert valid_key(key)


@pytest.mark.parametrize("key", ["", "x" * 129, "a/b", "a b", "ключ", "a%2F", "a\n", "a?b"])
def test_other_keys_are_refused(key: str) -> None:
    assert not valid_key(key)


def test_keys_are_scoped_to_the_client_token() -> None:
    assert scoped_key("abc", None) == "-/abc"
    mine, theirs = scoped_key("abc", "token-a"), scoped_key("abc", "token-b")
    assert mine != theirs
    assert mine.endswith("/abc")
    assert "token-a" not in mine


# -- Last-Event-ID -------------------------------------------------------------------


def test_no_last_event_id_starts_at_the_beginning() -> None:
    assert start_position(None, "/_ssekit/streams/abc", 5) == 0


@pytest.mark.parametrize("value", ["0", "3", "5"])
def test_a_position_from_0_to_the_count_is_valid(value: str) -> None:
    assert start_position(value.encode(), "/s", 5) == int(value)
    assert start_position(None, f"/s?last_event_id={value}", 5) == int(value)


@pytest.mark.parametrize("value", ["-1", "6", "", " 3", "+3", "3.0", "1_0", "abc", "٣", "0x3"])
def test_anything_else_is_refused_never_read_as_the_start(value: str) -> None:
    refusal = start_position(value.encode(), "/s", 5)
    assert isinstance(refusal, Refusal)
    assert refusal.status == 400
    refusal = start_position(None, f"/s?last_event_id={value}", 5)
    assert isinstance(refusal, Refusal)
    assert refusal.status == 400


@pytest.mark.parametrize("digits", [20, 4301, 5000])
def test_a_position_of_thousands_of_digits_is_refused_not_converted(digits: int) -> None:
    # int() raises ValueError past 4300 digits: the length is checked first (issue 20.3).
    for refusal in (
        start_position(b"7" * digits, "/s", 5),
        start_position(None, "/s?last_event_id=" + "7" * digits, 5),
    ):
        assert isinstance(refusal, Refusal)
        assert refusal.status == 400


def test_leading_zeros_do_not_count_against_the_length() -> None:
    assert start_position(b"0" * 30 + b"3", "/s", 5) == 3


def test_the_header_wins_over_the_query() -> None:
    # A browser EventSource reconnects to the same URL with a newer Last-Event-ID.
    assert start_position(b"4", "/s?last_event_id=1", 5) == 4


def test_plan_resume_answers_404_for_unknown_expired_and_given_up_streams() -> None:
    unknown = plan_resume(None, "abc", None, "/s", 0.0)
    assert isinstance(unknown, Refusal)
    assert unknown.status == 404
    expired = plan_resume(info(state=State.DONE, expires=10.0), "abc", None, "/s", 10.0)
    assert isinstance(expired, Refusal)
    assert expired.status == 404
    assert plan_resume(info(state=State.DONE, expires=10.0), "abc", None, "/s", 9.9) == Replay(0)
    given_up = plan_resume(info(resumable=False), "abc", None, "/s", 0.0)
    assert isinstance(given_up, Refusal)
    assert given_up.status == 404
    assert plan_resume(info(), "abc", b"2", "/s", 0.0) == Replay(2)
    bad = plan_resume(info(), "abc", b"9", "/s", 0.0)
    assert isinstance(bad, Refusal)
    assert bad.status == 400


def test_a_position_past_a_live_streams_store_waits_for_it_then_is_refused() -> None:
    # The client may have been sent event 9 before the store had it (issue 19.1).
    assert plan_resume(info(), "abc", b"9", "/s", 0.0, patient=True) == CatchUp(9)
    assert plan_resume(info(count=9), "abc", b"9", "/s", 0.0, patient=True) == Replay(9)
    for settled in (
        plan_resume(info(), "abc", b"9", "/s", 0.0, patient=False),  # waited long enough
        plan_resume(info(state=State.DONE), "abc", b"9", "/s", 0.0, patient=True),  # ended
        plan_resume(info(state=State.CUT), "abc", b"9", "/s", 0.0, patient=True),
        plan_resume(info(), "abc", b"nine", "/s", 0.0, patient=True),  # not a number
    ):
        assert isinstance(settled, Refusal)
        assert settled.status == 400


# -- framing -------------------------------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@given(
    data=TEXT,
    event=st.sampled_from(["message", "token", "error"]),
    retry=st.none() | st.integers(0, 10**6),
    position=st.integers(1, 10**9),
)
@example(data="line one\r\nline two\rthree\n", event="message", retry=None, position=1)
@example(data="你好🙂", event="token", retry=5000, position=7)
@example(data="", event="message", retry=None, position=3)
def test_a_stored_event_comes_back_the_same_with_its_position_as_id(
    data: str, event: str, retry: int | None, position: int
) -> None:
    upstream = ssekit.Event(data=data, event=event, id="upstream-id", retry=retry)
    wire = frame(position, event_body(upstream))
    (back,) = ssekit.Decoder().feed(wire)
    normalised = data.replace("\r\n", "\n").replace("\r", "\n")
    assert back == ssekit.Event(data=normalised, event=event, id=str(position), retry=retry)


@given(
    sizes=st.lists(st.integers(0, 300), max_size=30),
    limit=st.integers(1, 200),
)
@example(sizes=[], limit=10)
@example(sizes=[0, 0, 0], limit=1)
@example(sizes=[50, 5, 400, 5], limit=64)
def test_the_replay_is_written_in_bounded_pieces_that_join_to_the_framed_events(
    sizes: list[int], limit: int
) -> None:
    events = [(n, b"d" * size) for n, size in enumerate(sizes, 1)]
    written = list(pieces(events, limit))
    assert b"".join(written) == b"".join(frame(n, body) for n, body in events)
    assert all(written)
    for piece in written:  # at most the limit, or one small event's frame past it
        assert len(piece) <= limit or piece.count(b"\n\n") == 1


def test_grace_and_owner_rules() -> None:
    assert not grace_expired(now=10.0, unattached_since=None, grace=0.0)
    assert not grace_expired(now=10.0, unattached_since=9.5, grace=1.0)
    assert grace_expired(now=10.5, unattached_since=9.5, grace=1.0)
    assert owner_lost(state=State.LIVE, owner_alive=False)
    assert not owner_lost(state=State.LIVE, owner_alive=True)
    assert not owner_lost(state=State.DONE, owner_alive=False)


# -- the store's health ----------------------------------------------------------------


def test_an_outage_is_said_once_and_probed_with_backoff_however_the_store_flaps() -> None:
    outage = Outage()
    assert outage.up
    assert outage.failed(now=100.0)  # an outage begins: say so
    assert not outage.up
    waits = []
    now = 100.0
    for _ in range(6):  # each failed probe doubles the wait, up to PROBE_MAX
        waits.append(outage.probe_at - now)
        assert not outage.probe_due(outage.probe_at - 0.01)
        now = outage.probe_at
        assert outage.probe_due(now)
        assert not outage.failed(now)  # the same outage: nothing more to say
    assert waits == [PROBE_FIRST, 2 * PROBE_FIRST, 4 * PROBE_FIRST, 8 * PROBE_FIRST,
                     PROBE_MAX, PROBE_MAX]  # fmt: skip
    # It answers, then fails again before it held STEADY: the same outage, a longer wait.
    outage.answered(now)
    assert outage.up
    assert not outage.over(now + STEADY / 2)
    assert not outage.failed(now + STEADY / 2)
    assert outage.probe_at - (now + STEADY / 2) == PROBE_MAX
    # It answers and holds: the outage is over, said once; the next failure is a new one.
    outage.answered(now + 20)
    assert not outage.over(now + 20 + STEADY - 0.01)
    assert outage.over(now + 20 + STEADY)
    assert not outage.over(now + 30 + STEADY)
    assert outage.failed(now + 100)
    assert outage.probe_at == now + 100 + PROBE_FIRST


def test_a_store_address_loses_its_password_in_logs() -> None:
    assert redacted("redis://:pw@10.0.0.1:6379/0") == "redis://:***@10.0.0.1:6379/0"
    assert redacted("redis://me:pw@host/1") == "redis://me:***@host/1"
    assert redacted("redis://host:6379/0") == "redis://host:6379/0"
