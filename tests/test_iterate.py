"""iter_events and aiter_events: options, a caller's decoder, closing the source."""

from __future__ import annotations

import collections.abc
import contextlib
import typing
from collections.abc import AsyncIterator, Iterator

import pytest

import ssekit
from ssekit import Comment, Event

pytestmark = pytest.mark.anyio

WIRE = [b": hb\nid: 1\ndata: a\n\n", b"retry: 300\ndata: b\n\n", b"data: c\n\n"]


class Source:
    """Chunks from a generator that records whether it was closed."""

    def __init__(self) -> None:
        self.closed = False
        self.served = 0

    def sync(self) -> Iterator[bytes]:
        try:
            for chunk in WIRE:
                self.served += 1
                yield chunk
        finally:
            self.closed = True

    async def asynchronous(self) -> AsyncIterator[bytes]:
        try:
            for chunk in WIRE:
                self.served += 1
                yield chunk
        finally:
            self.closed = True


async def test_closing_aiter_events_early_closes_the_source_at_once() -> None:
    source = Source()
    chunks = source.asynchronous()  # held here, so garbage collection cannot close it
    async with contextlib.aclosing(ssekit.aiter_events(chunks)) as events:
        async for event in events:
            assert event == Event(data="a", id="1")
            break
    assert source.closed
    assert source.served == 1


def test_closing_iter_events_early_closes_the_source_at_once() -> None:
    source = Source()
    chunks = source.sync()
    with contextlib.closing(ssekit.iter_events(chunks)) as events:
        for _ in events:
            break
    assert source.closed


async def test_a_source_without_aclose_is_left_alone() -> None:
    class Plain:
        def __aiter__(self) -> Plain:
            return self

        async def __anext__(self) -> bytes:
            raise StopAsyncIteration

    assert [e async for e in ssekit.aiter_events(Plain())] == []


def test_aiter_events_is_typed_as_an_async_generator() -> None:
    # So type checkers see aclose(), which the caller needs to leave early.
    hint = typing.get_type_hints(ssekit.aiter_events)["return"]
    assert typing.get_origin(hint) is collections.abc.AsyncGenerator


async def test_iterators_take_the_decoder_options() -> None:
    expected = [Comment(text="hb"), Event(data="a", id="1"), Event(data="b", id="1", retry=300)]
    assert list(ssekit.iter_events(WIRE[:2], comments=True)) == expected
    assert [e async for e in ssekit.aiter_events(Source().asynchronous(), comments=True)][:3] == (
        expected
    )
    with pytest.raises(ssekit.LimitExceeded):
        list(ssekit.iter_events(WIRE, max_event_size=8))
    with pytest.raises(ssekit.LimitExceeded):
        [e async for e in ssekit.aiter_events(Source().asynchronous(), max_event_size=8)]


async def test_iterators_take_a_decoder_whose_state_stays_readable() -> None:
    decoder = ssekit.Decoder(last_event_id="0")
    events = list(ssekit.iter_events([b"data: x\n\nretry: 5\n\ndata: cut"], decoder=decoder))
    assert events == [Event(data="x", id="0")]
    assert (decoder.retry, decoder.closed, decoder.ended_mid_event) == (5, True, True)
    adecoder = ssekit.Decoder()
    assert [e async for e in ssekit.aiter_events(Source().asynchronous(), decoder=adecoder)] == [
        Event(data="a", id="1"),
        Event(data="b", id="1", retry=300),
        Event(data="c", id="1"),
    ]
    assert adecoder.last_event_id == "1"
    with pytest.raises(TypeError):
        list(ssekit.iter_events(WIRE, decoder=ssekit.Decoder(), comments=True))  # type: ignore[call-overload]
