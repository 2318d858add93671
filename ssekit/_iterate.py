"""Iterate events over any (async) iterable of byte chunks."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Generator, Iterable
from typing import Literal, overload

from ._decoder import DEFAULT_MAX_EVENT_SIZE, Decoder, T
from ._event import Comment, Event

__all__ = ("aiter_events", "iter_events")

Chunks = Iterable[bytes | bytearray | memoryview]
AsyncChunks = AsyncIterable[bytes | bytearray | memoryview]


@overload
def iter_events(chunks: Chunks, *, decoder: Decoder[T]) -> Generator[T, None, None]: ...


@overload
def iter_events(
    chunks: Chunks,
    *,
    comments: Literal[False] = False,
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
) -> Generator[Event, None, None]: ...


@overload
def iter_events(
    chunks: Chunks,
    *,
    comments: Literal[True],
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
) -> Generator[Event | Comment, None, None]: ...


def iter_events(
    chunks: Chunks,
    *,
    comments: bool = False,
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
    decoder: Decoder[T] | None = None,
) -> Generator[Event | Comment, None, None]:
    """Yield the events of an event stream given as byte chunks of any size.

    Works on ``httpx.Response.iter_bytes()``, a file read in blocks, a socket
    reader. Each event is yielded as soon as the chunk ending it arrives. An
    unterminated event at the end is dropped, as the spec says. ``comments``
    and ``max_event_size`` are the :class:`Decoder`'s; or pass your own
    ``decoder`` (not both) to read its state (``last_event_id``, ``retry``,
    ``ended_mid_event``) during and after the iteration.

    Raises :class:`LimitExceeded` past ``max_event_size``. However the
    iteration ends (exhausted, an error, or closed early by ``close()`` or a
    ``break`` in a ``with contextlib.closing(...)``), ``chunks``' iterator is
    closed when it has a ``close()`` method, so a generator over a response
    releases it.
    """
    decoder = _decoder_for(decoder, comments, max_event_size)
    iterator = iter(chunks)
    try:
        for chunk in iterator:
            yield from decoder.feed(chunk)
        yield from decoder.close()
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


@overload
def aiter_events(chunks: AsyncChunks, *, decoder: Decoder[T]) -> AsyncGenerator[T, None]: ...


@overload
def aiter_events(
    chunks: AsyncChunks,
    *,
    comments: Literal[False] = False,
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
) -> AsyncGenerator[Event, None]: ...


@overload
def aiter_events(
    chunks: AsyncChunks,
    *,
    comments: Literal[True],
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
) -> AsyncGenerator[Event | Comment, None]: ...


async def aiter_events(
    chunks: AsyncChunks,
    *,
    comments: bool = False,
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
    decoder: Decoder[T] | None = None,
) -> AsyncGenerator[Event | Comment, None]:
    """Async twin of :func:`iter_events`, e.g. over ``httpx.Response.aiter_bytes()``
    or an anyio ``ByteReceiveStream``.

    An async generator: close it (``await events.aclose()``, or iterate inside
    ``async with contextlib.aclosing(aiter_events(...)) as events``) when
    leaving early, and it closes ``chunks``' iterator at once (when that has
    an ``aclose()``), so the connection under it is released without waiting
    for garbage collection.
    """
    decoder = _decoder_for(decoder, comments, max_event_size)
    iterator = aiter(chunks)
    try:
        async for chunk in iterator:
            for event in decoder.feed(chunk):
                yield event
        for event in decoder.close():
            yield event
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


def _decoder_for(decoder: Decoder[T] | None, comments: bool, max_event_size: int) -> Decoder[T]:
    if decoder is None:
        return Decoder(comments=comments, max_event_size=max_event_size)  # type: ignore[return-value]
    if comments or max_event_size != DEFAULT_MAX_EVENT_SIZE:
        raise TypeError("pass either decoder= or comments=/max_event_size=, not both")
    return decoder
