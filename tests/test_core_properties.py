"""Properties: split invariance, agreement with the spec oracle, bounds, encoder round trip."""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import assume, example, given
from oracle import parse
from splits import feed_at, feed_bytewise, feed_whole

import ssekit
from ssekit import Event

# Every test here runs on each implementation, pure and compiled (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("each_decoder")

NAMES = st.sampled_from(["data", "event", "id", "retry", "foo", "Data", "", "da ta"])
SHORT_VALUES = st.text(alphabet=st.sampled_from(list("ab 1+٥\x00你好😀\ufeff\u2028:é")), max_size=8)
# Long values too: digit runs around the 20-digit bound of a retry and past
# Python's 4300-digit int() limit, with and without leading zeros.
LONG_VALUES = st.builds(
    lambda zeros, digits, tail: "0" * zeros + "9" * digits + tail,
    st.sampled_from([0, 1, 4400]),
    st.sampled_from([19, 20, 21, 4300, 4301, 6000]),
    st.sampled_from(["", "x", "5"]),
)
VALUES = SHORT_VALUES | LONG_VALUES
ENDINGS = st.sampled_from([b"\n", b"\r\n", b"\r"])


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["field", "bare", "comment", "blank", "spaced"]))
    end = draw(ENDINGS)
    name = draw(NAMES).encode()
    value = draw(VALUES).encode()
    if kind == "field":
        return name + b":" + value + end
    if kind == "spaced":
        return name + b":" + b" " * draw(st.integers(1, 2)) + value + end
    if kind == "bare":
        return name + end
    if kind == "comment":
        return b":" + value + end
    return end


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    bom = b"\xef\xbb\xbf" * draw(st.integers(0, 2))
    body = b"".join(draw(st.lists(lines(), max_size=25)))
    # Sometimes cut the last line short, or leave a raw byte soup tail.
    tail = draw(st.sampled_from([b"", b"data: tail", b"\xe4\xbd", b"\r"]))
    return bom + body + tail


@st.composite
def streams_and_cuts(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    stream = draw(streams())
    return stream, draw(st.lists(st.integers(0, len(stream)), max_size=8))


# -- hard cases, pinned --------------------------------------------------
# CR and LF either side of a cut
@example((b"data: x\r\n\r\n", [8]))
@example((b"data: x\r\r", [8]))
@example((b"data: x\n\r\n", [8, 9]))
# a BOM and a 4-byte character split at every byte
@example((b"\xef\xbb\xbfdata: \xf0\x9f\x98\x80\n\n", [1, 2, 3, 10, 11, 12]))
# two BOMs
@example((b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n", [3]))
# data without a colon; two spaces after the colon
@example((b"data\n\ndata:  x\n\n", [5]))
# retry with + or non-ASCII digits; an id with NUL; an id-only block
@example(("retry: +5\nretry: ٥\nid: a\x00b\n\nid: 3\n\n".encode(), []))
# a CR-only stream whose last CR ends the final chunk
@example((b"data: 1\r\rdata: 2\r\r", [18]))
# a retry too long for int() (4301+ digits) between events, in one chunk and cut
@example((b"data: a\n\nretry: " + b"9" * 4301 + b"\ndata: b\n\n", []))
@example((b"retry: 7\n\nretry: " + b"1" * 5000 + b"\n\n", [12, 3000]))
# retry at the unsigned 64-bit bound and one past it
@example((b"retry: 18446744073709551615\n\nretry: 18446744073709551616\n\n", [20]))
@given(streams_and_cuts())
def test_any_split_gives_the_oracles_events(case: tuple[bytes, list[int]]) -> None:
    check_against_oracle(*case)


def check_against_oracle(
    stream: bytes, cuts: list[int], max_event_size: int | None = None, comments: bool = True
) -> None:
    expected = parse(stream, max_event_size=max_event_size, comments=comments)
    options = {"max_event_size": max_event_size, "comments": comments}
    for result in (
        feed_whole(stream, **options),  # type: ignore[arg-type]
        feed_bytewise(stream, **options),  # type: ignore[arg-type]
        feed_at(stream, cuts, **options),  # type: ignore[arg-type]
    ):
        assert result.error == expected.error
        assert list(result.items) == expected.items
        if expected.error is None:
            assert result.last_event_id == expected.last_event_id
            assert result.retry == expected.reconnection_time


@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=8))
def test_random_bytes_match_oracle_and_never_raise(stream: bytes, cuts: list[int]) -> None:
    check_against_oracle(stream, cuts)


# Bounds around the field names' lengths (a kept name is at most 5 bytes) and
# around the long values' lengths.
BOUNDS = st.integers(1, 40) | st.sampled_from([4, 5, 6, 7, 4300, 4310, 5000, 6010])


# a long comment and a long unknown field are dropped, a long data line is not
@example((b": " + b"x" * 50 + b"\ndata: a\n\n", [3, 30]), 16, False)
@example((b": " + b"x" * 50 + b"\ndata: a\n\n", [3, 30]), 16, True)
@example((b"foo" + b"x" * 50 + b"\r\rdata: a\r\r", [53, 54]), 16, False)
@example((b"data: a\n\ndata: " + b"x" * 50 + b"\n\n", [12]), 16, False)
# only the first N bytes decide: "data" could still be the data field
@example((b"datax: 1\n\n", []), 4, False)
@example((b"dax: 1\n\n", []), 4, False)
# a dropped line still makes the block non-empty; an unterminated long last line
@example((b"id: 1\nfoo: " + b"x" * 20, []), 8, False)
@example((b"data: " + b"x" * 20, [9]), 8, False)
@given(streams_and_cuts(), BOUNDS, st.booleans())
def test_any_split_with_a_bound_gives_the_oracles_outcome(
    case: tuple[bytes, list[int]], limit: int, comments: bool
) -> None:
    check_against_oracle(*case, max_event_size=limit, comments=comments)


@given(
    st.binary(max_size=200),
    st.lists(st.integers(0, 200), max_size=6),
    st.integers(1, 40),
    st.booleans(),
)
def test_random_bytes_with_a_bound_match_the_oracle_and_raise_only_limit_exceeded(
    stream: bytes, cuts: list[int], limit: int, comments: bool
) -> None:
    check_against_oracle(stream, cuts, max_event_size=limit, comments=comments)


@given(
    st.integers(1, 5000),
    st.integers(1, 700),
    st.sampled_from([b"data: ", b"data:", b"event:", b"id:", b"retry: 0"]),
)
def test_endless_kept_line_trips_the_limit_with_bounded_buffering(
    limit: int, chunk: int, start: bytes
) -> None:
    decoder = ssekit.Decoder(max_event_size=limit)
    stream = start + b"0" * (limit + chunk)
    fed = 0
    with pytest.raises(ssekit.LimitExceeded) as info:
        for index in range(0, len(stream), chunk):
            decoder.feed(stream[index : index + chunk])
            fed += chunk
    # It raised on the first chunk that took the line past the bound: what it
    # held before that chunk was within the limit.
    assert fed <= limit
    assert fed + chunk > limit
    assert info.value.size == fed + chunk
    assert info.value.limit == "line"


@given(
    st.integers(1, 5000),
    st.integers(1, 700),
    st.sampled_from([b":", b": ", b"foo:", b"x", b"dataa", b"retry0"]),
    st.sampled_from([b"\n", b"\r", b"\r\n"]),
)
def test_endless_dropped_line_never_raises_and_holds_at_most_the_bound(
    limit: int, chunk: int, start: bytes, end: bytes
) -> None:
    assume(not (limit < 6 and start in (b"dataa", b"retry0")))  # "data" may be kept
    assume(not (limit < 4 and start == b"foo:"))  # "f" ... "foo": no colon seen yet
    decoder = ssekit.Decoder(max_event_size=limit)
    after = b"data: after" if limit >= 11 else b""  # a line within the bound
    stream = start + b"y" * (3 * limit + 2 * chunk) + end + after + end + end
    events = []
    for index in range(0, len(stream), chunk):
        events += decoder.feed(stream[index : index + chunk])
        # White-box: the partial line the decoder holds between feeds.
        assert len(decoder._line) <= limit
    assert events == ([Event(data="after")] if after else [])


texts = st.text(
    alphabet=st.sampled_from(list("ab :\n\r你😀\x00\ufeff"))
    | st.characters(exclude_categories=["Cs"]),
    max_size=20,
)
single_line = texts.filter(lambda s: "\n" not in s and "\r" not in s)


@given(
    st.builds(
        Event,
        data=texts,
        event=single_line,
        id=single_line.filter(lambda s: "\x00" not in s),
        retry=st.none() | st.integers(0, 10**12),
    ),
    st.lists(st.integers(0, 200), max_size=6),
)
def test_encoded_events_decode_back_under_any_split(event: Event, cuts: list[int]) -> None:
    wire = ssekit.encode(event)
    expected = Event(
        data=event.data.replace("\r\n", "\n").replace("\r", "\n"),
        event=event.event or "message",
        id=event.id,
        retry=event.retry,
    )
    assert feed_at(wire, cuts).items == (expected,)
    assert feed_bytewise(wire).items == (expected,)


@given(texts, st.lists(st.integers(0, 100), max_size=4))
def test_encoded_comments_decode_back_line_by_line(text: str, cuts: list[int]) -> None:
    wire = ssekit.encode_comment(text)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    assert [c.text for c in feed_at(wire, cuts).items] == lines  # type: ignore[union-attr]


def naive_wire(event: Event) -> bytes:
    """What a writer that checks nothing sends (data lines split, as the encoder does)."""
    head = f"event: {event.event}\nid: {event.id}\nretry: {event.retry}\n"
    data = event.data.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\ndata: ")
    return (head + f"data: {data}\n\n").encode("utf-8", "surrogatepass")


@example(Event(data="x", event="a\nb"))
@example(Event(data="x", id="1\r2"))
@example(Event(data="x", id="a\x00"))
@example(Event(data="x", retry=-5))
@example(Event(data="\ud800"))
@example(Event(data="x", event="", id="", retry=0))
@given(
    st.builds(
        Event,
        data=texts | st.just("\ud800"),
        event=texts,
        id=texts,
        retry=st.none() | st.integers(-3, 10**6),
    )
)
def test_the_encoder_refuses_exactly_what_would_not_survive(event: Event) -> None:
    # Either the encoder writes the event and it decodes back, or it refuses
    # and the unchecked wire form would not have decoded back: never a refusal
    # of something SSE can carry, never bytes that arrive changed.
    expected = Event(
        data=event.data.replace("\r\n", "\n").replace("\r", "\n"),
        event=event.event or "message",
        id=event.id,
        retry=event.retry,
    )
    naive_survives = feed_whole(naive_wire(event)).items == (expected,)
    try:
        wire = ssekit.encode(event, write_id=True)
    except ssekit.EncodeError:
        assert not naive_survives
    else:
        assert feed_whole(wire).items == (expected,)
        assert naive_survives


@example({"data": "x", "event": "a\nb"})
@example({"data": "x", "id": "a\x00"})
@example({"data": "\ud800", "id": "1"})
@example({"data": "x", "retry": -5})
@example({"data": "x", "retry": True})  # bool is an int to Event, not to the fast path
@example({"data": "a\r\nb\rc", "event": "", "id": "", "retry": 0})
@example({})
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "data": texts | st.just("\ud800"),
            "event": texts,
            "id": texts,
            "retry": st.none() | st.integers(-3, 10**6) | st.booleans(),
        },
    )
)
def test_asgi_dict_items_encode_exactly_as_the_event_they_name(fields: dict[str, Any]) -> None:
    # sse-starlette-style dicts skip building the Event on ssekit.asgi's hot path: the
    # bytes, or the error, must be those of encode(Event(**fields)).
    from ssekit.asgi import encode_item

    try:
        expected: bytes | type[Exception] = ssekit.encode(Event(**fields))
    except (ssekit.EncodeError, TypeError) as exc:
        expected = type(exc)
    try:
        got: bytes | type[Exception] = encode_item(fields)
    except (ssekit.EncodeError, TypeError) as exc:
        got = type(exc)
    assert got == expected
