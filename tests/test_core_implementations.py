"""The two Decoders, pure and compiled: how one is chosen, and that they never differ.

The differential properties feed both the same bytes under the same splits and compare
everything either gives: the items of every feed() (and their exact types), the state
after it (last event ID, reconnection time, closed, at_boundary, and the whole state
``__getstate__`` gives, which copy and pickle keep), and any error (type, limit, size,
maximum, setting, the events carried; InputTypeError's argument and type for what is not
bytes), then StateError from both once closed or failed. The rest pins what only one
of them can get wrong: the choice at import, buffer types, re-entrant calls, the C
compiler's warnings.
"""

from __future__ import annotations

import copy
import gc
import itertools
import os
import pickle
import shutil
import subprocess
import sys
import sysconfig
import tracemalloc
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import example, given
from implementations import IMPLEMENTATIONS, NOT_BUILT, CompiledDecoder, PureDecoder, needs_compiled
from oracle import parse

import ssekit
from ssekit import Comment, Event, InputTypeError, LimitExceeded, StateError

ROOT = Path(__file__).resolve().parent.parent

# -- feeding both, comparing everything ------------------------------------------------


def outcome(decoder: Any, call: Any) -> tuple[object, ...]:
    """What one call gave: its items and the state after it, or its error and the state."""
    try:
        items = call()
    except LimitExceeded as exc:
        result: tuple[object, ...] = (
            "LimitExceeded",
            exc.limit,
            exc.size,
            exc.maximum,
            exc.setting,
            [(type(item), item) for item in exc.events],
        )
    except StateError as exc:
        result = ("StateError", type(exc.__cause__))
    except InputTypeError as exc:
        result = ("InputTypeError", exc.argument, exc.got)
    else:
        assert type(items) is list
        result = ("items", [(type(item), item) for item in items])
    state = (
        decoder.last_event_id,
        decoder.retry,
        decoder.closed,
        decoder.at_boundary,
        decoder.ended_mid_event,
    )
    # White-box: all each holds between feeds, as copy and pickle see it (a failed
    # decoder holds nothing usable, and its LimitExceeded is its own object).
    none, slots = decoder.__getstate__()
    assert none is None
    held = (bytes(decoder._line), decoder._data_size, slots) if slots["_error"] is None else ()
    return (result, state, held)


#: Where run_both closes both decoders (None is a piece: not bytes).
CLOSE = object()


def run_both(
    pieces: list[bytes | bytearray | memoryview] | list[object], close: bool = True, **options: Any
) -> list[tuple[object, ...]]:
    """Feed both decoders ``pieces``, one outcome per call; assert they agree, call by call."""
    assert CompiledDecoder is not None
    pure, compiled = PureDecoder(**options), CompiledDecoder(**options)
    outcomes = []
    calls = [*pieces, CLOSE] if close else pieces
    for piece in calls:
        if piece is CLOSE:
            mine, theirs = outcome(pure, pure.close), outcome(compiled, compiled.close)
        else:
            mine = outcome(pure, lambda p=piece: pure.feed(p))
            theirs = outcome(compiled, lambda p=piece: compiled.feed(p))
        assert mine == theirs, (piece, mine, theirs)
        outcomes.append(mine)
    # Closed or failed, both now refuse to go on.
    for decoder in (pure, compiled):
        with pytest.raises(StateError):
            decoder.feed(b"data: x\n\n")
    return outcomes


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(stream)}), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


# Bytes that matter to the parser, and bytes that matter to UTF-8, mixed with any byte.
TOKENS = [
    b"data",
    b"event",
    b"id",
    b"retry",
    b"da",
    b"ret",
    b":",
    b" ",
    b"  ",
    b"\n",
    b"\r",
    b"\r\n",
    b"\xef\xbb\xbf",
    b"\xef",
    b"\xef\xbb",
    b"\x00",
    b"7",
    b"007",
    b"18446744073709551615",  # the largest retry
    b"18446744073709551616",
    b"\xe4\xbd\xa0",  # 你
    b"\xe4\xbd",  # 你, cut short
    b"\xf0\x9f\x98\x80",  # 😀
    b"\xf0\x9f",
    b"\x80",
    b"\xc0\x80",  # overlong
    b"\xed\xa0\x80",  # a surrogate
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"\xff",
    b"x" * 20,
]

byte_soup = st.lists(st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=3), max_size=40).map(
    b"".join
)
options = st.fixed_dictionaries(
    {},
    optional={
        "comments": st.booleans(),
        "max_event_size": st.integers(1, 40) | st.sampled_from([2**63, 2**100]),
        "last_event_id": st.sampled_from(["", "41", "你"]),
    },
)
buffer_kinds = st.sampled_from([bytes, bytearray, memoryview])


# -- the differential properties ---------------------------------------------------------


@needs_compiled
# a BOM split at every byte, then the first line
@example(b"\xef\xbb\xbfdata: x\n\n", [1, 2], {})
@example(b"\xef\xbbdata: x\n\n", [1], {"max_event_size": 1})
# CR ending a chunk, its LF opening the next; a CR-only stream
@example(b"data: a\r\n\r\n", [8, 9], {})
@example(b"data: 1\r\rdata: 2\r\r", [8, 17], {})
# the bound: a kept line, a dropped one skipped across chunks, the data buffer
@example(b"data: one\n\ndata: " + b"x" * 30 + b"\n\n", [12, 20], {"max_event_size": 16})
@example(b": " + b"c" * 30 + b"\r\ndata: a\n\n", [5, 32, 33], {"max_event_size": 8})
@example(b"data: 0123\ndata: 0123\ndata: 0123\n", [], {"max_event_size": 10})
# event types that begin alike (the compiled decoder reuses the previous one's str)
@example(b"event: ab\ndata\n\nevent: a\ndata\n\nevent:\ndata\n\nevent: ab\ndata\n\n", [], {})
# retry at the 20-digit edge: the largest value, and 20 digits with leading zeros
@example(b"retry: 18446744073709551615\ndata\n\nretry: 00000000000000000007\ndata\n\n", [9], {})
@example(b"retry: 18446744073709551616\ndata\n\n", [], {})
# an id ending in NUL (ignored); retry values with the bytes beside the digits; a retry
# in an earlier block is not the next event's
@example(b"id: 1\ndata\n\nid: 2\x00\ndata\n\n", [], {})
@example(b"retry: 1:2\ndata\n\nretry: 3/\ndata\n\nretry: 5\n\ndata\n\n", [], {})
# two event fields in one block: the second replaces the first
@example(b"event: a\nevent: b\ndata\n\n", [], {})
@given(byte_soup, st.lists(st.integers(0, 200), max_size=10), options)
def test_both_decoders_agree_on_any_bytes_under_any_split(
    stream: bytes, cuts: list[int], settings: dict[str, Any]
) -> None:
    run_both(split(stream, cuts), **settings)  # type: ignore[arg-type]


@needs_compiled
@given(byte_soup, st.lists(st.tuples(st.integers(0, 200), buffer_kinds), max_size=8), options)
def test_both_decoders_agree_on_every_kind_of_buffer(
    stream: bytes, cuts: list[tuple[int, type]], settings: dict[str, Any]
) -> None:
    kinds = dict(cuts)
    pieces: list[bytes | bytearray | memoryview] = []
    start = 0
    for piece in split(stream, list(kinds)):
        kind = kinds.get(start, bytes)
        pieces.append(kind(piece))  # type: ignore[arg-type]
        start += len(piece)
    run_both(pieces, **settings)


# Things callers pass that are not bytes; a list of ints would pass a fast `in` check.
NOT_BYTES = ["data: x\n\n", "", "\r", 7, None, 1.5, [100, 10], [13], [], (), {0x0A: 1}]


@needs_compiled
@given(
    byte_soup,
    st.lists(st.integers(0, 200), max_size=6),
    st.lists(st.tuples(st.integers(0, 8), st.sampled_from(NOT_BYTES)), min_size=1, max_size=4),
    options,
)
def test_both_decoders_refuse_what_is_not_bytes_alike_and_go_on(
    stream: bytes, cuts: list[int], bad: list[tuple[int, object]], settings: dict[str, Any]
) -> None:
    pieces: list[object] = list(split(stream, cuts))
    for at, value in sorted(bad, key=lambda pair: pair[0], reverse=True):
        pieces.insert(min(at, len(pieces)), value)
    outcomes = run_both(pieces, **settings)
    for piece, (result, _, _) in zip(pieces, outcomes, strict=False):
        if not isinstance(piece, bytes):
            # Even once closed or failed: the type is checked first, and nothing changes.
            assert result == ("InputTypeError", "data", type(piece).__name__)
    # The same stream without them: the same items, as if those calls never happened.
    clean = [o for p, o in zip(pieces, outcomes, strict=False) if isinstance(p, bytes)]
    assert clean == run_both(split(stream, cuts), **settings)[: len(clean)]


@needs_compiled
@given(byte_soup, options)
def test_both_decoders_agree_byte_by_byte(stream: bytes, settings: dict[str, Any]) -> None:
    run_both([stream[i : i + 1] for i in range(len(stream))], **settings)


# Invalid UTF-8 wherever a value is decoded (data, id, event type, comment), each kind of
# bad sequence, and every single cut of the stream.
BAD_UTF8 = [
    b"\x80",
    b"\xbf\x80",
    b"\xc0\x80",
    b"\xc2",
    b"\xe4\xbd",
    b"\xe4\xbdx",
    b"\xed\xa0\x80",
    b"\xef\xbb",
    b"\xf0\x9f\x98",
    b"\xf4\x90\x80\x80",
    b"\xf5",
    b"\xff\xfe",
    b"a\xe4\xbd\xa0\xe4",
]


@needs_compiled
@pytest.mark.parametrize("bad", BAD_UTF8, ids=lambda b: b.hex())
def test_invalid_utf8_is_replaced_alike_under_every_cut(bad: bytes) -> None:
    stream = (
        b"id: " + bad + b"\nevent: " + bad + b"\n: " + bad + b"\rdata: " + bad + b"\r\n"
        b"data:" + bad + b"\n\n"
    )
    expected = parse(stream)
    for cut in range(len(stream) + 1):
        outcomes = run_both(split(stream, [cut]), comments=True)
        items = [item for result, _, _ in outcomes for _, item in result[1]]  # type: ignore[index]
        assert items == expected.items, cut


# The compiled decoder decodes well-formed UTF-8 itself (see decode() in _cdecoder.c) and
# leaves the rest to Python: it must give Python's text for any bytes, at any length.
UTF8_PIECES = [*(t for t in TOKENS if t[:1] >= b"\x80"), *BAD_UTF8, "é".encode(), "\uffff".encode()]
PAD = b"0123456789abcdef"  # values under 16 bytes go straight to Python's decoder


@needs_compiled
@given(st.lists(st.sampled_from(UTF8_PIECES) | st.binary(max_size=3), max_size=30).map(b"".join))
@example(PAD + "\U0010ffff".encode() + b"\xf4\x90\x80\x80")
@example(PAD + b"\xed\x9f\xbf\xed\xa0\x80\xee\x80\x80")
@example(PAD + b"\xe0\x9f\xbf\xe0\xa0\x80\xf0\x8f\xbf\xbf\xf0\x90\x80\x80")
def test_the_compiled_utf8_decoding_is_pythons(data: bytes) -> None:
    from ssekit._cdecoder import _decode

    for value in (data, PAD + data, data + PAD, PAD + data + PAD):
        assert _decode(value) == value.decode("utf-8", "replace")


@needs_compiled
def test_the_compiled_utf8_decoding_is_pythons_for_every_lead_and_second_byte() -> None:
    # Each value holds one sequence at most, so none falls back to Python's decoder
    # before the compiled one has judged it: every bound of the well-formed ranges.
    from ssekit._cdecoder import _decode

    for lead, second in itertools.product(range(256), repeat=2):
        for tail in (b"", b"\x80", b"\xbf\xbf", b"\x80\x80z"):
            value = PAD + bytes([lead, second]) + tail
            assert _decode(value) == value.decode("utf-8", "replace"), value


@needs_compiled
@given(st.binary(max_size=60), st.lists(st.integers(0, 60), max_size=6), options)
def test_both_decoders_agree_on_random_bytes(
    stream: bytes, cuts: list[int], settings: dict[str, Any]
) -> None:
    run_both(split(stream, cuts), **settings)  # type: ignore[arg-type]


@needs_compiled
@pytest.mark.parametrize(
    "stream",
    [
        b"\xef\xbb\xbfdata: a\n\n",
        b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n",
        b"\xef\xbbdata: a\n\ndata: b\n\n",
        b"\xef\rdata: b\n\n",
        b"\xef\xbb\xbf\r\ndata: b\r\n\r\n",
        b"\xef\xbb\xbf",
    ],
)
def test_a_bom_split_across_feeds_alike_under_every_double_cut(stream: bytes) -> None:
    for i, j in itertools.combinations_with_replacement(range(len(stream) + 1), 2):
        for limit in (1, 2, 3, 64):
            run_both(split(stream, [i, j]), max_event_size=limit, comments=True)


@needs_compiled
def test_an_endless_line_fails_alike_wherever_it_passes_the_bound() -> None:
    for start, chunk in itertools.product([b"data: ", b"id:", b":", b"foo:", b"ret"], [1, 3, 7]):
        stream = start + b"0" * 40 + b"\n\ndata: after\n\n"
        for limit in (4, 5, 6, 16):
            pieces = [stream[i : i + chunk] for i in range(0, len(stream), chunk)]
            run_both(pieces, max_event_size=limit)
            run_both(pieces, max_event_size=limit, comments=True)


# -- choosing the implementation ---------------------------------------------------------


def fresh(code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter (with ``env`` added); its stdout."""
    environ = {k: v for k, v in os.environ.items() if k != "SSEKIT_PURE"} | env
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=environ
    )
    return out.stdout.strip()


SAYS = "import ssekit; print(ssekit.decoder_implementation, ssekit.Decoder.__module__)"


def test_the_compiled_decoder_is_chosen_when_built() -> None:
    expected = "pure ssekit._decoder" if CompiledDecoder is None else "compiled ssekit._compiled"
    assert fresh(SAYS) == expected
    assert fresh(SAYS, SSEKIT_PURE="0") == expected


def test_ssekit_pure_forces_the_pure_decoder() -> None:
    assert fresh(SAYS, SSEKIT_PURE="1") == "pure ssekit._decoder"
    code = "import ssekit; print(repr(ssekit.Decoder()).endswith('implementation=pure>'))"
    assert fresh(code, SSEKIT_PURE="1") == "True"


def test_the_compiled_decoder_is_built_where_it_is_required() -> None:
    # .ci/run sets this wherever a C compiler and Python's headers are found: a build
    # that broke must fail there, not quietly leave every compiled test skipped.
    if os.environ.get("SSEKIT_REQUIRE_COMPILED"):
        assert CompiledDecoder is not None, NOT_BUILT


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_each_decoder_says_which_it_is(implementation: type) -> None:
    name = "pure" if implementation is PureDecoder else "compiled"
    text = repr(implementation())
    assert text.startswith("<ssekit.Decoder open last_event_id='' retry=None at_boundary=True")
    assert text.endswith(f"max_event_size={ssekit.DEFAULT_MAX_EVENT_SIZE} implementation={name}>")


def test_ssekit_decoder_is_the_one_announced() -> None:
    chosen = CompiledDecoder if ssekit.decoder_implementation == "compiled" else PureDecoder
    assert ssekit._decoder.Decoder is chosen
    assert ssekit.decoder_implementation in ("compiled", "pure")
    if "SSEKIT_PURE" not in os.environ:
        assert (ssekit.decoder_implementation == "compiled") == (CompiledDecoder is not None)


def test_importing_ssekit_loads_only_the_standard_library() -> None:
    code = (
        "import sys; before = set(sys.modules); import ssekit; "
        "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} "
        "- set(sys.stdlib_module_names) - {'ssekit'}))"
    )
    assert fresh(code) == "[]"


def test_every_user_of_the_decoder_gets_the_one_chosen() -> None:
    # The proxy's tap, ssekit.asgi (raw bytes items), the iterators, the clients: all
    # import ssekit._decoder.Decoder, which is the compiled one when it is in use.
    import importlib

    from ssekit.proxy._pump import Tap
    from ssekit.proxy._stats import StreamStats

    chosen = ssekit._decoder.Decoder
    for name in ("_iterate", "asgi", "httpx", "client._connect", "proxy._pump"):
        assert importlib.import_module(f"ssekit.{name}").Decoder is chosen, name
    tap = Tap(StreamStats(), started=0.0)
    assert type(tap._decoder) is chosen
    tap.feed(b"data: x\n\n")
    assert tap.at_boundary


@needs_compiled
def test_the_compiled_decoder_keeps_the_documented_constants_and_docstring() -> None:
    from ssekit import _cdecoder

    assert _cdecoder.DEFAULT_MAX_EVENT_SIZE == ssekit.DEFAULT_MAX_EVENT_SIZE
    assert _cdecoder.MAX_RETRY == ssekit.MAX_RETRY
    if ssekit.decoder_implementation == "compiled":
        assert ssekit.Decoder.__doc__ == PureDecoder.__doc__


# -- what only the compiled decoder could get wrong ----------------------------------------


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("state", ["fresh", "primed", "closed", "failed"])
def test_only_buffers_are_fed(implementation: type, state: str) -> None:
    for bad in NOT_BYTES:
        decoder = implementation(max_event_size=8)
        if state == "primed":
            decoder.feed(b"id: 1\n")
        elif state == "closed":
            decoder.close()
        elif state == "failed":
            with pytest.raises(LimitExceeded):
                decoder.feed(b"data: 123456789\n")
        before = decoder.__getstate__()
        with pytest.raises(InputTypeError) as info:
            decoder.feed(bad)
        assert isinstance(info.value, TypeError)
        assert (info.value.argument, info.value.got) == ("data", type(bad).__name__)
        assert decoder.__getstate__() == before


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_strided_memoryview_is_read_as_its_bytes(implementation: type) -> None:
    wire = b"dxaxtxax:x xax\nx\nx"  # every other byte: b"data: a\n\n"
    view = memoryview(wire)[::2]
    assert not view.contiguous
    assert implementation().feed(view) == [Event(data="a")]
    assert implementation().feed(memoryview(b"xxdata: b\n\n")[2:]) == [Event(data="b")]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_bytearray_fed_is_not_kept(implementation: type) -> None:
    decoder = implementation()
    chunk = bytearray(b"data: par")
    assert decoder.feed(chunk) == []
    chunk[:] = b"XXXXXXXXXXXXXXX"  # the caller reuses its buffer
    assert decoder.feed(bytearray(b"t\n\n")) == [Event(data="part")]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_event_size": 0}, ValueError),
        ({"max_event_size": -(2**100)}, ValueError),
        ({"max_event_size": 0.5}, InputTypeError),
        ({"max_event_size": 1.0}, InputTypeError),
        ({"max_event_size": 1e9}, InputTypeError),
        ({"max_event_size": "64"}, InputTypeError),
        ({"max_event_size": None}, InputTypeError),
        ({"last_event_id": 5}, InputTypeError),
        ({"last_event_id": b"5"}, InputTypeError),
        ({"last_event_id": None}, InputTypeError),
    ],
)
def test_bad_settings_are_refused_alike(
    implementation: type, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        implementation(**kwargs)
    if error is InputTypeError:
        ((name, value),) = kwargs.items()
        assert isinstance(info.value, TypeError)
        assert (info.value.argument, info.value.got) == (name, type(value).__name__)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_an_int_like_bound_is_taken_as_its_int(implementation: type) -> None:
    # operator.index: an int subclass or any __index__ (a numpy integer), never a float.
    class Size:
        def __index__(self) -> int:
            return 8

    decoder = implementation(max_event_size=Size())
    assert decoder.__getstate__()[1]["_max"] == 8
    with pytest.raises(LimitExceeded) as info:
        decoder.feed(b"data: 123456789\n")
    assert info.value.maximum == 8


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_settings_are_keyword_only(implementation: type) -> None:
    with pytest.raises(TypeError):
        implementation(True)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_bound_beyond_memory_is_no_bound(implementation: type) -> None:
    decoder = implementation(max_event_size=2**100)
    assert decoder.feed(b"data: " + b"x" * 1000 + b"\n\n") == [Event(data="x" * 1000)]
    assert "max_event_size=1267650600228229401496703205376 " in repr(decoder)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_init_again_starts_a_new_stream(implementation: type) -> None:
    decoder = implementation(max_event_size=4)
    with pytest.raises(LimitExceeded):
        decoder.feed(b"data: long\n")
    decoder.__init__(last_event_id="7")
    assert decoder.feed(b"data: x\n\n") == [Event(data="x", id="7")]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_subscripting_and_subclassing_work_alike(implementation: type) -> None:
    assert implementation[Event]().feed(b"data: x\n\n") == [Event(data="x")]

    class Counting(implementation):  # type: ignore[misc,valid-type]
        __slots__ = ()

        def feed(self, data: bytes) -> list[Event]:
            return [*super().feed(data)]

    assert Counting(comments=True).feed(b":hb\n") == [Comment(text="hb")]


COPIES = {
    "copy": copy.copy,
    "deepcopy": copy.deepcopy,
    "pickle": lambda decoder: pickle.loads(pickle.dumps(decoder)),
    "pickle-0": lambda decoder: pickle.loads(pickle.dumps(decoder, protocol=0)),
    "pickle-highest": lambda decoder: pickle.loads(pickle.dumps(decoder, pickle.HIGHEST_PROTOCOL)),
}


def feed_or_close(decoder: Any, piece: bytes | None) -> tuple[object, ...]:
    return outcome(decoder, decoder.close if piece is None else lambda: decoder.feed(piece))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("how", list(COPIES))
@example(b"data: a\r", [7], 1, {}).via("a CR owed its LF")
@example(b"\xef\xbbdata: a\n\n", [1], 1, {}).via("a BOM undecided")
@example(b"data: 1234\ndata: 12345678\n\n", [], 1, {"max_event_size": 8}).via("failed")
@example(b": " + b"c" * 30 + b"\ndata: a\n\n", [10], 1, {"max_event_size": 8}).via("skipping")
@given(byte_soup, st.lists(st.integers(0, 200), max_size=8), st.integers(0, 10), options)
def test_a_copy_or_pickle_goes_on_where_the_original_was(
    implementation: type,
    how: str,
    stream: bytes,
    cuts: list[int],
    at: int,
    settings: dict[str, Any],
) -> None:
    pieces: list[bytes | None] = [*split(stream, cuts), None]
    at = min(at, len(pieces) - 1)
    original, reference = implementation(**settings), implementation(**settings)
    for piece in pieces[:at]:
        assert feed_or_close(original, piece) == feed_or_close(reference, piece)
    copied = COPIES[how](original)
    assert type(copied) is implementation
    mine, theirs = original.__getstate__()[1], copied.__getstate__()[1]
    assert type(mine.pop("_error")) is type(theirs.pop("_error"))
    assert mine == theirs
    # Fed in turns, each goes on as a decoder that was never copied: nothing is shared.
    for piece in pieces[at:]:
        expected = feed_or_close(reference, piece)
        assert feed_or_close(original, piece) == expected
        assert feed_or_close(copied, piece) == expected


@needs_compiled
@given(byte_soup, st.lists(st.integers(0, 200), max_size=8), st.integers(0, 10), options)
def test_each_decoder_goes_on_from_the_others_state(
    stream: bytes, cuts: list[int], at: int, settings: dict[str, Any]
) -> None:
    assert CompiledDecoder is not None
    pieces: list[bytes | None] = [*split(stream, cuts), None]
    at = min(at, len(pieces) - 1)
    pure, compiled = PureDecoder(**settings), CompiledDecoder(**settings)
    for piece in pieces[:at]:
        feed_or_close(pure, piece)
        feed_or_close(compiled, piece)
    from_compiled, from_pure = PureDecoder(), CompiledDecoder()
    from_compiled.__setstate__(compiled.__getstate__())
    from_pure.__setstate__(pure.__getstate__())
    for piece in pieces[at:]:
        expected = feed_or_close(pure, piece)
        assert feed_or_close(from_compiled, piece) == expected
        assert feed_or_close(from_pure, piece) == expected
        assert feed_or_close(compiled, piece) == expected


@needs_compiled
@pytest.mark.parametrize(
    "mangle",
    [
        lambda state: state[1],  # the dict alone
        lambda state: ({}, state[1]),
        lambda state: (None, {**state[1], "_data": (b"a",)}),
        lambda state: (None, {**state[1], "_data": [b"a\nb"]}),
        lambda state: (None, {**state[1], "_line": "text"}),
        lambda state: (None, {**state[1], "_bom_pending": b"\xef\xbb\xbf"}),
        lambda state: (None, {**state[1], "_max": 0}),
        lambda state: (None, {**state[1], "_max": 1.5}),
        lambda state: (None, {**state[1], "_retry": "5"}),
        lambda state: (None, {**state[1], "_error": ValueError("x")}),
        lambda state: (None, {**state[1], "_id_buffer": b"1"}),
        lambda state: (None, {k: v for k, v in state[1].items() if k != "_pending"}),
    ],
)
def test_the_compiled_decoder_refuses_a_state_it_could_not_have(mangle: Any) -> None:
    assert CompiledDecoder is not None
    decoder = CompiledDecoder()
    decoder.feed(b"id: 1\ndata: a\nda")
    before = decoder.__getstate__()
    with pytest.raises((TypeError, ValueError)):
        decoder.__setstate__(mangle(before))
    assert decoder.__getstate__() == before
    assert decoder.feed(b"ta: b\n\n") == [Event(data="a\nb", id="1")]


@needs_compiled
def test_the_compiled_decoder_refuses_calls_made_while_it_parses() -> None:
    # Python code can run inside feed() (LimitExceeded.__init__, or finalizers that a
    # garbage collection runs there); the buffers being parsed must not move meanwhile.
    assert CompiledDecoder is not None
    decoder = CompiledDecoder(max_event_size=8)
    seen: list[type[Exception]] = []
    original = LimitExceeded.__init__

    def meddling_init(self: LimitExceeded, *args: Any, **kwargs: Any) -> None:
        for call in (
            lambda: decoder.feed(b"\n\n"),
            decoder.close,
            lambda: decoder.__init__(),  # type: ignore[misc]
        ):
            try:
                call()
            except StateError as exc:
                seen.append(type(exc))
        original(self, *args, **kwargs)

    LimitExceeded.__init__ = meddling_init  # type: ignore[method-assign]
    try:
        with pytest.raises(LimitExceeded) as info:
            decoder.feed(b"data: a\n\ndata: " + b"x" * 20 + b"\n\n")
    finally:
        LimitExceeded.__init__ = original  # type: ignore[method-assign]
    assert seen == [StateError, StateError, StateError]
    assert info.value.events == [Event(data="a")]
    with pytest.raises(StateError) as later:
        decoder.feed(b"\n")
    assert later.value.__cause__ is info.value


@needs_compiled
def test_a_failed_compiled_decoder_in_a_cycle_is_collected() -> None:
    # The decoder holds its error, whose traceback holds the frame that holds the
    # decoder: only the garbage collector frees that (tp_traverse and tp_clear).
    assert CompiledDecoder is not None

    def fail() -> None:
        decoder = CompiledDecoder(max_event_size=2)
        with pytest.raises(LimitExceeded):
            decoder.feed(b"data: x\n")

    def alive() -> int:
        return sum(type(o) is CompiledDecoder for o in gc.get_objects())

    gc.collect()
    before = alive()
    for _ in range(50):
        fail()
    gc.collect()
    assert alive() == before


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_large_event_is_let_go_once_dispatched(implementation: type) -> None:
    decoder = implementation()
    chunk = b"x" * (64 * 1024)
    tracemalloc.start()
    try:
        decoder.feed(b"data: ")
        for _ in range(64):  # a 4 MiB data line
            decoder.feed(chunk)
        (event,) = decoder.feed(b"\n\n")
        assert len(event.data) == 64 * len(chunk)
        del event
        baseline = tracemalloc.get_traced_memory()[0]
        decoder.feed(b"data: small\n\n")
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held - baseline < 64 * 1024
    assert baseline < 256 * 1024  # neither the line nor the data buffer kept 4 MiB


@needs_compiled
def test_the_extension_compiles_without_warnings(tmp_path: Path) -> None:
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    include = sysconfig.get_paths()["include"]
    if compiler is None or not (Path(include) / "Python.h").exists():
        pytest.skip("no C compiler or Python headers here")
    command = [compiler, "-O2", "-Wall", "-Wextra", "-Werror", "-fPIC", "-I", include]
    command += ["-c", str(ROOT / "ssekit" / "_cdecoder.c"), "-o", str(tmp_path / "out.o")]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
