"""Errors that name the caller's mistake: a specific type and attributes, raised at once."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

import ssekit
from ssekit import Event

pytestmark = pytest.mark.anyio

OPENAI_401 = (
    json.dumps(
        {
            "error": {
                "message": "Incorrect API key provided: sk-xx. You can find your API key at ...",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        },
        indent=2,
    ).encode()
    + b"\n"
)


@pytest.mark.parametrize(("body", "kind"), [(b"data: x\n\n", "bytes"), ("data: x\n\n", "str")])
def test_iter_events_over_bytes_or_str_says_it_needs_an_iterable_of_chunks(
    body: bytes | str, kind: str
) -> None:
    # Raised by the call itself, not at the first next(), and never from inside the decoder.
    with pytest.raises(ssekit.InputTypeError) as info:
        ssekit.iter_events(body)  # type: ignore[call-overload]
    assert isinstance(info.value, TypeError)
    assert (info.value.argument, info.value.got) == ("chunks", kind)
    with pytest.raises(ssekit.InputTypeError) as ainfo:
        ssekit.aiter_events(body)  # type: ignore[call-overload]
    assert (ainfo.value.argument, ainfo.value.got) == ("chunks", kind)


@pytest.mark.parametrize("primed", [False, True], ids=["fresh", "after-a-chunk"])
@pytest.mark.parametrize(("data", "kind"), [("data: x\n\n", "str"), (7, "int"), (None, "NoneType")])
def test_feeding_anything_but_bytes_says_bytes_are_needed(
    data: object, kind: str, primed: bool
) -> None:
    # A fresh decoder takes its slow path (the BOM is undecided), a primed one the fast path.
    decoder = ssekit.Decoder()
    if primed:
        assert decoder.feed(b"id: 1\n") == []
    with pytest.raises(ssekit.InputTypeError) as info:
        decoder.feed(data)  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError)
    assert (info.value.argument, info.value.got) == ("data", kind)
    # Nothing changed: the decoder goes on as if the call had not happened.
    assert decoder.feed(b"data: x\n\n") == [Event(data="x", id="1" if primed else "")]


def test_bytes_like_chunks_are_still_taken() -> None:
    decoder = ssekit.Decoder()
    assert decoder.feed(memoryview(b"data: a\n")) == []
    assert decoder.feed(bytearray(b"\n")) == [Event(data="a")]


@pytest.mark.parametrize("size", [len(OPENAI_401), 1, 7], ids=["whole", "byte-by-byte", "7-byte"])
def test_iter_chunks_over_a_json_error_body_says_it_was_not_an_event_stream(size: int) -> None:
    reads = [OPENAI_401[i : i + size] for i in range(0, len(OPENAI_401), size)]
    with pytest.raises(ssekit.NotAnEventStream) as info:
        list(ssekit.iter_chunks(ssekit.iter_events(reads)))
    assert not isinstance(info.value, ssekit.StreamIncomplete)
    assert json.loads(info.value.body) == json.loads(OPENAI_401)


async def test_aiter_chunks_over_a_json_error_body_says_it_was_not_an_event_stream() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield OPENAI_401[:10]
        yield OPENAI_401[10:]

    with pytest.raises(ssekit.NotAnEventStream) as info:
        [c async for c in ssekit.aiter_chunks(ssekit.aiter_events(body()))]
    assert json.loads(info.value.body)["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    "wire",
    [
        b"",  # nothing at all: a cut before the first byte
        b": ping\n\n",  # a comment, then cut
        b'data: {"choices": []}\n\n',  # a chunk, then cut
        b'{"error": "not closed',  # JSON-looking, but not a document: nothing to tell
        b"  \n\n",
    ],
)
def test_a_stream_cut_before_done_is_still_incomplete(wire: bytes) -> None:
    with pytest.raises(ssekit.StreamIncomplete):
        list(ssekit.iter_chunks(ssekit.iter_events([wire])))


def test_a_body_that_opens_like_json_but_dispatches_events_is_a_stream() -> None:
    # Such a first line is a field the spec ignores; once an event comes, it is a stream.
    wire = b'{"x": 1}\ndata: a\n\n'
    assert list(ssekit.iter_events([wire])) == [Event(data="a")]


def test_a_json_body_larger_than_the_sniff_limit_is_left_to_the_spec() -> None:
    big = b'{"pad": "' + b"x" * ssekit._iterate.SNIFF_LIMIT + b'"}'
    assert list(ssekit.iter_events([big])) == []


@pytest.mark.parametrize(
    ("fields", "argument", "got"),
    [({"data": b"x"}, "data", "bytes"), ({"id": 7}, "id", "int"), ({"retry": "5"}, "retry", "str")],
)
def test_an_event_field_of_the_wrong_type_is_named(
    fields: dict[str, object], argument: str, got: str
) -> None:
    with pytest.raises(ssekit.InputTypeError) as info:
        Event(**fields)  # type: ignore[arg-type]
    assert (info.value.argument, info.value.got) == (argument, got)
