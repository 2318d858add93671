"""Iterate events over any (async) iterable of byte chunks."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator

from ._decoder import DEFAULT_MAX_EVENT_SIZE, Decoder
from ._event import Event

__all__ = ("aiter_events", "iter_events")


def iter_events(
    chunks: Iterable[bytes | bytearray | memoryview],
    *,
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
) -> Iterator[Event]:
    """Yield the events of an event stream given as byte chunks of any size.

    Works on ``httpx.Response.iter_bytes()``, a file read in blocks, a socket
    reader. Each event is yielded as soon as the chunk ending it arrives. An
    unterminated event at the end is dropped, as the spec says. Raises
    :class:`LimitExceeded` past ``max_event_size``.
    """
    decoder = Decoder(max_event_size=max_event_size)
    for chunk in chunks:
        yield from decoder.feed(chunk)
    yield from decoder.close()


async def aiter_events(
    chunks: AsyncIterable[bytes | bytearray | memoryview],
    *,
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
) -> AsyncIterator[Event]:
    """Async twin of :func:`iter_events`, e.g. over ``httpx.Response.aiter_bytes()``
    or an anyio ``ByteReceiveStream``."""
    decoder = Decoder(max_event_size=max_event_size)
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.close():
        yield event
