"""The WHATWG event-stream rules, one test each, and the spec's own examples under every cut.

https://html.spec.whatwg.org/multipage/server-sent-events.html#parsing-an-event-stream
"""

from __future__ import annotations

import itertools
import sys
import time
import tracemalloc

import pytest
from oracle import parse
from splits import feed_at, feed_bytewise, feed_whole

import ssekit
from ssekit import Comment, Event

# Every test here runs on each implementation, pure and compiled (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("each_decoder")

# The examples of the spec's "Interpreting an event stream" section, verbatim.
SPEC_EXAMPLES = {
    "stock": b"data: YHOO\ndata: +2\ndata: 10\n\n",
    "first_second_third": (
        b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\n"
        b"data:  third event\n"
    ),
    "two_events_one_empty": b"data\n\ndata\ndata\n\ndata:\n",
    "space_after_colon": b"data:test\n\ndata: test\n\n",
    "event_types": b"event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\n",
}


@pytest.mark.parametrize("name", sorted(SPEC_EXAMPLES))
def test_spec_example_matches_oracle_under_every_single_and_double_cut(name: str) -> None:
    stream = SPEC_EXAMPLES[name]
    expected = parse(stream)
    for i, j in itertools.combinations_with_replacement(range(len(stream) + 1), 2):
        result = feed_at(stream, (i, j))
        assert list(result.items) == expected.items, (i, j)
        assert result.last_event_id == expected.last_event_id
        assert result.retry == expected.reconnection_time


def test_stock_example_joins_data_lines_with_lf() -> None:
    assert feed_whole(SPEC_EXAMPLES["stock"]).items == (Event(data="YHOO\n+2\n10"),)


def test_first_second_third_example() -> None:
    result = feed_whole(SPEC_EXAMPLES["first_second_third"])
    assert result.items == (
        Comment(text="test stream"),
        Event(data="first event", id="1"),
        Event(data="second event", id=""),
    )
    # The third block is never terminated, so it is not dispatched.
    assert result.last_event_id == ""


def test_empty_data_lines_dispatch_empty_and_newline_events() -> None:
    assert feed_whole(SPEC_EXAMPLES["two_events_one_empty"]).items == (
        Event(data=""),
        Event(data="\n"),
    )


def test_exactly_one_space_after_the_colon_is_dropped() -> None:
    assert feed_whole(b"data:test\n\ndata: test\n\ndata:  test\n\n").items == (
        Event(data="test"),
        Event(data="test"),
        Event(data=" test"),
    )


def test_event_type_is_used_then_reset_after_dispatch() -> None:
    assert feed_whole(b"event: add\ndata: 1\n\ndata: 2\n\n").items == (
        Event(event="add", data="1"),
        Event(data="2"),
    )


def test_empty_event_field_means_message() -> None:
    assert feed_whole(b"event:\ndata: x\n\n").items == (Event(data="x"),)


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_kind_ends_lines(ending: bytes) -> None:
    stream = ending.join([b"id: 7", b"data: a", b"data: b", b"", b""])
    assert feed_whole(stream).items == (Event(data="a\nb", id="7"),)


def test_mixed_line_endings() -> None:
    assert feed_whole(b"data: a\rdata: b\r\ndata: c\n\r\n").items == (Event(data="a\nb\nc"),)


def test_cr_at_end_of_chunk_ends_the_line_now() -> None:
    decoder = ssekit.Decoder()
    assert decoder.feed(b"data: x\r") == []
    # The blank line arrives as a lone CR: the event is due on this very call.
    assert decoder.feed(b"\r") == [Event(data="x")]


def test_lf_after_a_cr_in_the_next_chunk_is_not_a_blank_line() -> None:
    decoder = ssekit.Decoder()
    assert decoder.feed(b"data: x\r") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"data: y\r\n\r\n") == [Event(data="x\ny")]


def test_cr_only_stream_whose_last_cr_ends_the_final_chunk_dispatches_now() -> None:
    decoder = ssekit.Decoder()
    assert decoder.feed(b"data: 1\r\rdata: 2\r") == [Event(data="1")]
    assert decoder.feed(b"\r") == [Event(data="2")]


def test_each_event_comes_from_the_feed_that_delivers_its_blank_line() -> None:
    stream = b"data: a\n\ndata: b\n\n"
    decoder = ssekit.Decoder()
    delivered = [decoder.feed(stream[i : i + 1]) for i in range(len(stream))]
    assert delivered[8] == [Event(data="a")]
    assert delivered[-1] == [Event(data="b")]
    assert sum(map(len, delivered)) == 2


def test_field_without_colon_has_empty_value() -> None:
    assert feed_whole(b"data\n\n").items == (Event(data=""),)
    assert feed_whole(b"id\n\n").last_event_id == ""


def test_unknown_fields_are_ignored() -> None:
    assert feed_whole(b"foo: bar\ndata: x\nDATA: y\n\n").items == (Event(data="x"),)


def test_comments_are_ignored_by_default_and_surfaced_when_asked() -> None:
    stream = b": hello\ndata: x\n:\n\n"
    assert ssekit.Decoder().feed(stream) == [Event(data="x")]
    assert ssekit.Decoder(comments=True).feed(stream) == [
        Comment(text="hello"),
        Comment(text=""),
        Event(data="x"),
    ]


def test_unterminated_final_event_is_not_dispatched() -> None:
    decoder = ssekit.Decoder()
    assert decoder.feed(b"data: whole\n\ndata: cut") == [Event(data="whole")]
    assert decoder.ended_mid_event
    assert decoder.close() == []


def test_block_terminated_by_one_line_break_is_not_dispatched_at_close() -> None:
    decoder = ssekit.Decoder()
    assert decoder.feed(b"data: almost\n") == []
    assert decoder.ended_mid_event
    assert not decoder.at_boundary
    assert decoder.close() == []


def test_at_boundary_between_blocks() -> None:
    decoder = ssekit.Decoder()
    assert decoder.at_boundary
    decoder.feed(b"data: x\n")
    assert not decoder.at_boundary
    decoder.feed(b"\n: comment\n")
    assert decoder.at_boundary


def test_id_is_carried_by_later_events_until_changed() -> None:
    assert feed_whole(b"id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\n").items == (
        Event(data="a", id="1"),
        Event(data="b", id="1"),
        Event(data="c", id="2"),
    )


def test_empty_id_resets_the_last_event_id() -> None:
    result = feed_whole(b"id: 1\ndata: a\n\nid\ndata: b\n\n")
    assert result.items == (Event(data="a", id="1"), Event(data="b", id=""))
    assert result.last_event_id == ""


def test_id_containing_nul_is_ignored() -> None:
    result = feed_whole(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n")
    assert result.items[1] == Event(data="b", id="1")


def test_id_only_block_updates_last_event_id_but_dispatches_nothing() -> None:
    decoder = ssekit.Decoder()
    assert decoder.feed(b"id: 42\n\n") == []
    assert decoder.last_event_id == "42"
    assert decoder.feed(b"data: x\n\n") == [Event(data="x", id="42")]


def test_last_event_id_changes_at_dispatch_not_when_the_field_arrives() -> None:
    decoder = ssekit.Decoder()
    decoder.feed(b"id: 5\ndata: x\n")
    assert decoder.last_event_id == ""
    decoder.feed(b"\n")
    assert decoder.last_event_id == "5"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"0", 0),
        (b"1500", 1500),
        (b"007", 7),
        (b"+5", None),
        (b"-5", None),
        (b" 5", None),  # a second space: the value is " 5"
        (b"5 ", None),
        (b"1.5", None),
        (b"", None),
        ("٥".encode(), None),  # ARABIC-INDIC DIGIT FIVE is a digit, but not ASCII
        ("５".encode(), None),  # FULLWIDTH DIGIT FIVE
    ],
)
def test_retry_counts_only_when_all_ascii_digits(value: bytes, expected: int | None) -> None:
    result = feed_whole(b"retry: " + value + b"\ndata: x\n\n")
    assert result.retry == expected
    assert result.items == (Event(data="x", retry=expected),)


def test_retry_in_a_block_without_data_still_sets_the_reconnection_time() -> None:
    decoder = ssekit.Decoder()
    assert decoder.feed(b"retry: 250\n\n") == []
    assert decoder.retry == 250
    assert decoder.feed(b"data: x\n\n") == [Event(data="x")]


def test_leading_bom_is_stripped_once() -> None:
    bom = b"\xef\xbb\xbf"
    assert feed_whole(bom + b"data: x\n\n").items == (Event(data="x"),)
    # A second BOM is not stripped: the line is "\ufeffdata: x", an unknown field.
    assert feed_whole(bom + bom + b"data: x\n\n").items == ()
    assert feed_whole(bom + b"data: " + bom + b"\n\n").items == (Event(data="\ufeff"),)


def test_leading_bom_split_at_every_byte_is_stripped() -> None:
    stream = b"\xef\xbb\xbfdata: x\n\n"
    for cuts in itertools.combinations(range(1, 5), 2):
        assert feed_at(stream, cuts).items == (Event(data="x"),), cuts
    assert feed_bytewise(stream).items == (Event(data="x"),)


def test_bom_prefix_that_is_not_a_bom_is_data() -> None:
    # EF BB followed by something else is an invalid sequence, kept as U+FFFD.
    assert feed_bytewise(b"\xef\xbbdata: x\n\ndata: y\n\n").items == (Event(data="y"),)
    assert feed_bytewise(b"data: \xef\xbb\n\n").items == (Event(data="\ufffd"),)


@pytest.mark.parametrize("text", ["你好", "😀", "é", "日本語テキスト"])
def test_multibyte_character_split_at_every_byte_comes_out_whole(text: str) -> None:
    stream = f"data: {text}\n\n".encode()
    for cut in range(len(stream) + 1):
        assert feed_at(stream, (cut,)).items == (Event(data=text),), cut


def test_invalid_utf8_is_replaced_like_a_streaming_decoder() -> None:
    stream = b"data: a\xffb\xe4\xbd\n\n"
    expected = (Event(data="a\ufffdb\ufffd"),)
    assert feed_whole(stream).items == expected
    assert feed_bytewise(stream).items == expected


def test_nul_in_data_is_kept() -> None:
    assert feed_whole(b"data: a\x00b\n\n").items == (Event(data="a\x00b"),)


def test_limit_on_a_long_line_raises_limit_exceeded_naming_the_setting() -> None:
    decoder = ssekit.Decoder(max_event_size=64)
    decoder.feed(b"data: ")
    with pytest.raises(ssekit.LimitExceeded) as info:
        for _ in range(100):
            decoder.feed(b"x")
    assert info.value.maximum == 64
    assert info.value.size == 65
    assert info.value.setting == "max_event_size"


def test_limit_on_event_data_spread_over_lines() -> None:
    decoder = ssekit.Decoder(max_event_size=100)
    with pytest.raises(ssekit.LimitExceeded) as info:
        decoder.feed(b"data: 0123456789\n" * 20)
    assert info.value.limit == "event data"


def test_limit_on_a_long_complete_line_in_one_chunk() -> None:
    with pytest.raises(ssekit.LimitExceeded):
        ssekit.Decoder(max_event_size=10).feed(b"id: " + b"9" * 20 + b"\n\n")


def test_decoder_stays_failed_after_limit_exceeded() -> None:
    decoder = ssekit.Decoder(max_event_size=4)
    with pytest.raises(ssekit.LimitExceeded) as failure:
        decoder.feed(b"data: too long\n\n")
    with pytest.raises(ssekit.StateError) as info:
        decoder.feed(b"\n")
    assert info.value.__cause__ is failure.value  # failed earlier, and why
    with pytest.raises(ssekit.StateError):
        decoder.close()


def test_feeding_after_close_raises_state_error() -> None:
    decoder = ssekit.Decoder()
    decoder.close()
    with pytest.raises(ssekit.StateError) as info:
        decoder.feed(b"data: x\n\n")
    assert info.value.__cause__ is None  # closed, not failed


def test_accepts_bytearray_and_memoryview() -> None:
    decoder = ssekit.Decoder()
    assert decoder.feed(bytearray(b"data: a\n")) == []
    assert decoder.feed(memoryview(b"\ndata: b\n\n")) == [Event(data="a"), Event(data="b")]


def test_empty_chunk_is_a_no_op_not_end_of_stream() -> None:
    decoder = ssekit.Decoder()
    decoder.feed(b"data: x\n")
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n") == [Event(data="x")]


def test_invalid_max_event_size_is_refused() -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (the type, not the message text)
        ssekit.Decoder(max_event_size=0)


# -- retry values too long for an int, and the bound on them ------------------


def test_retry_with_thousands_of_digits_is_ignored_and_loses_nothing() -> None:
    # Python refuses int() of 4301+ digits; a browser (Chromium) ignores a
    # retry value that does not fit its unsigned 64-bit integer. Either way the
    # events around it must come out, and the decoder must keep working.
    decoder = ssekit.Decoder()
    stream = b"retry: 250\ndata: a\n\nretry: " + b"9" * 5000 + b"\ndata: b\n\n"
    assert decoder.feed(stream) == [Event(data="a", retry=250), Event(data="b")]
    assert decoder.retry == 250
    assert decoder.feed(b"data: c\n\n") == [Event(data="c")]


def test_retry_counts_up_to_the_unsigned_64_bit_bound_and_leading_zeros_are_free() -> None:
    top = str(2**64 - 1).encode()
    assert feed_whole(b"retry: " + top + b"\n\n").retry == 2**64 - 1
    assert feed_whole(b"retry: " + str(2**64).encode() + b"\n\n").retry is None
    assert feed_whole(b"retry: " + b"0" * 6000 + b"15\n\n").retry == 15
    assert ssekit.MAX_RETRY == 2**64 - 1


def test_a_megabyte_of_retry_digits_is_never_converted() -> None:
    # With the interpreter's digit limit off, int() of a megabyte of digits
    # takes seconds; the decoder must decide without converting it at all.
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        decoder = ssekit.Decoder()
        started = time.process_time()
        assert decoder.feed(b"retry: " + b"7" * 1_000_000 + b"\ndata: x\n\n") == [Event(data="x")]
        elapsed = time.process_time() - started
    finally:
        sys.set_int_max_str_digits(old)
    assert decoder.retry is None
    assert elapsed < 0.5  # converting would take several seconds of CPU


# -- LimitExceeded keeps what was already decoded -----------------------------


def test_limit_exceeded_on_event_data_carries_the_events_completed_before_it() -> None:
    decoder = ssekit.Decoder(max_event_size=20)
    with pytest.raises(ssekit.LimitExceeded) as info:
        decoder.feed(b"data: one\n\nid: 2\ndata: two\n\ndata: 0123456789\ndata: 0123456789\n")
    assert info.value.events == [Event(data="one"), Event(data="two", id="2")]


def test_limit_exceeded_on_a_long_line_carries_the_events_completed_before_it() -> None:
    decoder = ssekit.Decoder(max_event_size=16, comments=True)
    with pytest.raises(ssekit.LimitExceeded) as info:
        decoder.feed(b": hb\ndata: one\n\n" + b"data: " + b"x" * 40 + b"\n\n")
    assert info.value.events == [Comment(text="hb"), Event(data="one")]


def test_limit_exceeded_by_the_partial_line_carries_the_events_before_it() -> None:
    decoder = ssekit.Decoder(max_event_size=16)
    with pytest.raises(ssekit.LimitExceeded) as info:
        decoder.feed(b"data: one\n\ndata: " + b"x" * 40)
    assert info.value.events == [Event(data="one")]


def test_limit_exceeded_without_earlier_events_carries_none() -> None:
    with pytest.raises(ssekit.LimitExceeded) as info:
        ssekit.Decoder(max_event_size=4).feed(b"data: xxxxxxxxxx")
    assert info.value.events == []


# -- state for library authors ------------------------------------------------


def test_decoder_starts_from_a_given_last_event_id() -> None:
    # A reconnecting EventSource starts its new parser from the previous ID.
    decoder = ssekit.Decoder(last_event_id="41")
    assert decoder.last_event_id == "41"
    assert decoder.feed(b": hello\n\ndata: x\n\n") == [Event(data="x", id="41")]
    assert decoder.last_event_id == "41"
    assert decoder.feed(b"id\ndata: y\n\n") == [Event(data="y", id="")]
    assert decoder.last_event_id == ""


def test_decoder_state_is_read_only() -> None:
    decoder = ssekit.Decoder()
    for name, value in [("last_event_id", "x"), ("retry", 5), ("closed", True)]:
        with pytest.raises(AttributeError):
            setattr(decoder, name, value)
    assert (decoder.last_event_id, decoder.retry, decoder.closed) == ("", None, False)


def test_decoder_repr_shows_state_but_not_buffered_content() -> None:
    decoder = ssekit.Decoder(max_event_size=1000)
    decoder.feed(b"retry: 30\nid: 7\n\ndata: secret-token")
    text = repr(decoder)
    assert "last_event_id='7'" in text
    assert "retry=30" in text
    assert "at_boundary=False" in text
    assert "open" in text
    assert "secret" not in text
    decoder.close()
    assert "closed" in repr(decoder)
    failed = ssekit.Decoder(max_event_size=2)
    with pytest.raises(ssekit.LimitExceeded):
        failed.feed(b"data: x\n")
    assert "failed" in repr(failed)


# -- max_event_size bounds what is held, not lines the decoder drops ------------

MIB = 1024 * 1024


def feed_in_chunks(decoder: ssekit.Decoder[Event], stream: bytes, size: int) -> list[Event]:
    events: list[Event] = []
    for start in range(0, len(stream), size):
        events += decoder.feed(stream[start : start + size])
    return events


@pytest.mark.parametrize("chunk", [64 * 1024, 20 * MIB + 100])
def test_a_comment_longer_than_the_bound_is_skipped_when_comments_are_not_returned(
    chunk: int,
) -> None:
    stream = b"data: a\n\n:" + b"c" * (20 * MIB) + b"\r\ndata: b\n\n"
    decoder = ssekit.Decoder(max_event_size=16 * MIB)
    assert feed_in_chunks(decoder, stream, chunk) == [Event(data="a"), Event(data="b")]
    assert decoder.at_boundary


def test_an_unknown_field_longer_than_the_bound_is_skipped_under_every_cut() -> None:
    stream = b"id: 1\nfoo: " + b"v" * 50 + b"\r\rdata: b\r\n\r\nx" + b"y" * 40 + b"\n\n"
    expected = (Event(data="b", id="1"),)
    for i, j in itertools.combinations_with_replacement(range(len(stream) + 1), 2):
        result = feed_at(stream, (i, j), max_event_size=16)
        assert result.error is None, (i, j)
        assert result.items == expected, (i, j)
        assert result.last_event_id == "1"


def test_the_decoder_is_mid_event_while_it_skips_a_long_line() -> None:
    decoder = ssekit.Decoder(max_event_size=8)
    assert decoder.feed(b": " + b"x" * 20) == []
    assert not decoder.at_boundary
    assert decoder.feed(b"x" * 20 + b"\r") == []
    assert decoder.at_boundary
    # The LF of the CRLF pair that ended the skipped line is not a blank line.
    assert decoder.feed(b"\ndata: y\n") == []
    assert decoder.feed(b"\n") == [Event(data="y")]


@pytest.mark.parametrize(
    "line",
    [
        b"data: " + b"x" * 40,  # the data buffer holds it
        b"data:" + b"x" * 40,
        b"event: " + b"x" * 40,  # the event type is held until dispatch
        b"id: " + b"7" * 40,  # the last event ID is kept
        b"retry: " + b"0" * 40 + b"5",  # only the whole value says whether it counts
    ],
)
def test_a_long_line_of_a_field_the_decoder_keeps_still_raises(line: bytes) -> None:
    for chunk in (1, 7, len(line) + 2):
        decoder = ssekit.Decoder(max_event_size=16)
        with pytest.raises(ssekit.LimitExceeded) as info:
            feed_in_chunks(decoder, b"data: a\n\n" + line + b"\n\n", chunk)
        assert info.value.limit == "line"


def test_a_long_comment_raises_when_comments_are_returned() -> None:
    decoder = ssekit.Decoder(max_event_size=16, comments=True)
    with pytest.raises(ssekit.LimitExceeded) as info:
        decoder.feed(b": hb\n:" + b"x" * 40 + b"\n")
    assert info.value.events == [Comment(text="hb")]


def test_the_first_max_event_size_bytes_decide_whether_a_long_line_is_dropped() -> None:
    # With a 4-byte bound, "data" could still be the field "data": kept, so it
    # raises, even though the whole line names the unknown field "datax".
    with pytest.raises(ssekit.LimitExceeded):
        ssekit.Decoder(max_event_size=4).feed(b"datax: 12345\n")
    # "dax:" names a field the decoder ignores: skipped.
    assert ssekit.Decoder(max_event_size=4).feed(b"dax: 12345\ndata\n\n") == [Event(data="")]
    # Past five bytes without a colon the name is none the decoder keeps.
    assert ssekit.Decoder(max_event_size=16).feed(b"data" + b"x" * 40 + b"\n\n") == []


def test_memory_stays_bounded_while_a_huge_dropped_line_streams_through() -> None:
    bound, chunk = 1 * MIB, b"z" * (64 * 1024)
    decoder = ssekit.Decoder(max_event_size=bound)
    tracemalloc.start()
    try:
        decoder.feed(b":")
        for _ in range(20 * MIB // len(chunk)):  # a 20 MiB comment
            decoder.feed(chunk)
        held = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert decoder.feed(b"\ndata: after\n\n") == [Event(data="after")]
    # The partial line grows to just past the bound, then is let go.
    assert held < bound * 1.2 + 2 * len(chunk)


def test_decoded_events_are_plain_events() -> None:
    # The decoder builds events on a twin class with Event's slots, then
    # assigns __class__: what comes out must be an Event in every respect.
    for stream in (b"data: a\n\n", b"data: a\r\n\r\n", b"event: e\nid: 1\ndata: a\ndata: b\n\n"):
        (event,) = ssekit.Decoder().feed(stream)
        assert type(event) is Event
        assert event == Event(data=event.data, event=event.event, id=event.id)
        with pytest.raises(AttributeError):
            event.data = "changed"  # type: ignore[misc]
