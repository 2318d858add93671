"""OpenAI-style streams: [DONE], chunk JSON, errors, joined deltas, and the iterators."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

import ssekit
from ssekit import Event

pytestmark = pytest.mark.anyio


def chunk(content: str | None, index: int = 0) -> Event:
    delta = {} if content is None else {"content": content}
    return Event(data=json.dumps({"choices": [{"index": index, "delta": delta}]}))


DONE = Event(data="[DONE]")


def test_chunks_stop_at_done_and_join() -> None:
    events = [chunk("Hel"), chunk("lo "), chunk(None), chunk("世界"), DONE, chunk("after")]
    chunks = list(ssekit.iter_chunks(events))
    assert len(chunks) == 4
    assert ssekit.join_deltas(chunks) == "Hello 世界"


def test_join_deltas_picks_one_choice() -> None:
    chunks = [json.loads(chunk("a", 0).data), json.loads(chunk("b", 1).data)]
    assert ssekit.join_deltas(chunks, index=1) == "b"


def test_missing_done_means_the_stream_was_cut() -> None:
    with pytest.raises(ssekit.StreamIncomplete):
        list(ssekit.iter_chunks([chunk("partial")]))


@pytest.mark.parametrize(
    "event",
    [
        Event(data='{"error": {"message": "rate limited", "type": "requests"}}'),
        Event(data='{"message": "boom"}', event="error"),
    ],
)
def test_error_objects_raise_api_error_event(event: Event) -> None:
    with pytest.raises(ssekit.APIErrorEvent) as info:
        list(ssekit.iter_chunks([chunk("a"), event, DONE]))
    assert "message" in info.value.error


@pytest.mark.parametrize("data", ["not json", "[1, 2]", '"text"'])
def test_non_object_data_raises_chunk_error(data: str) -> None:
    with pytest.raises(ssekit.ChunkError):
        ssekit.parse_chunk(Event(data=data))


def test_iter_events_over_byte_chunks_of_any_size() -> None:
    wire = b"data: a\r\n\r\ndata: b\n\ndata: unterminated"
    assert list(ssekit.iter_events(wire[i : i + 1] for i in range(len(wire)))) == [
        Event(data="a"),
        Event(data="b"),
    ]


async def test_async_iterators_over_an_async_byte_source() -> None:
    wire = b"".join(ssekit.encode(e) for e in [chunk("x"), chunk("y"), DONE])

    async def source() -> AsyncIterator[bytes]:
        for i in range(0, len(wire), 5):
            yield wire[i : i + 5]

    chunks = [c async for c in ssekit.aiter_chunks(ssekit.aiter_events(source()))]
    assert ssekit.join_deltas(chunks) == "xy"

    async def cut() -> AsyncIterator[bytes]:
        yield wire[:20]

    with pytest.raises(ssekit.StreamIncomplete):
        [c async for c in ssekit.aiter_chunks(ssekit.aiter_events(cut()))]


async def test_aiter_chunks_left_early_in_aclosing_closes_the_events_at_once() -> None:
    import collections.abc
    import contextlib
    import typing

    closed = []

    async def events() -> collections.abc.AsyncGenerator[Event, None]:
        try:
            for text in ("a", "b", "c"):
                yield chunk(text)
        finally:
            closed.append(True)

    source = events()  # held here, so garbage collection cannot be what closes it
    async with contextlib.aclosing(ssekit.aiter_chunks(source)) as chunks:
        async for _ in chunks:
            break
    assert closed == [True]
    hint = typing.get_type_hints(ssekit.aiter_chunks)["return"]
    assert typing.get_origin(hint) is collections.abc.AsyncGenerator
