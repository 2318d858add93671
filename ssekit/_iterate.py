"""Iterate events over any (async) iterable of byte chunks."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterable, Generator, Iterable
from typing import Final, Literal, overload

from ._decoder import DEFAULT_MAX_EVENT_SIZE, Decoder, T
from ._errors import InputTypeError, NotAnEventStream
from ._event import Comment, Event

__all__ = ("aiter_events", "iter_events")

Chunks = Iterable[bytes | bytearray | memoryview]
AsyncChunks = AsyncIterable[bytes | bytearray | memoryview]

#: How much of a body's start is kept to tell a JSON document from an event stream (bytes).
SNIFF_LIMIT: Final = 64 * 1024


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
) -> Generator[T, None, None]:
    """Yield the events of an event stream given as byte chunks of any size.

    Works on ``httpx.Response.iter_bytes()``, a file read in blocks, a socket
    reader. Each event is yielded as soon as the chunk ending it arrives. An
    unterminated event at the end is dropped, as the spec says. ``comments``
    and ``max_event_size`` are the :class:`Decoder`'s; or pass your own
    ``decoder`` (not both) to read its state (``last_event_id``, ``retry``,
    ``ended_mid_event``) during and after the iteration.

    Raises :class:`LimitExceeded` past ``max_event_size``, and
    :class:`NotAnEventStream` at the end when the whole body was a JSON
    document that dispatched no event (an error answer, a 401 say, read as a
    stream: the decoder alone would yield nothing). However the iteration
    ends (exhausted, an error, or closed early by ``close()`` or a ``break``
    in a ``with contextlib.closing(...)``), ``chunks``' iterator is closed
    when it has a ``close()`` method, so a generator over a response releases
    it. Raises :class:`InputTypeError` (a ``TypeError``) at once when
    ``chunks`` is bytes or str rather than an iterable of byte chunks.
    """
    _check_chunks(chunks, "iter_events")
    return _iter_events(chunks, _decoder_for(decoder, comments, max_event_size))


def _iter_events(chunks: Chunks, decoder: Decoder[T]) -> Generator[T, None, None]:
    iterator = iter(chunks)
    sniff: _Sniff | None = _Sniff()
    try:
        for chunk in iterator:
            events = decoder.feed(chunk)
            if sniff is not None and not sniff.keep(chunk, events):
                sniff = None
            yield from events
        events = decoder.close()
        if sniff is not None and not events:
            sniff.check()
        yield from events
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


def aiter_events(
    chunks: AsyncChunks,
    *,
    comments: bool = False,
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
    decoder: Decoder[T] | None = None,
) -> AsyncGenerator[T, None]:
    """Async twin of :func:`iter_events`, e.g. over ``httpx.Response.aiter_bytes()``
    or an anyio ``ByteReceiveStream``.

    An async generator: close it (``await events.aclose()``, or iterate inside
    ``async with contextlib.aclosing(aiter_events(...)) as events``) when
    leaving early, and it closes ``chunks``' iterator at once (when that has
    an ``aclose()``), so the connection under it is released without waiting
    for garbage collection. Raises what :func:`iter_events` raises.
    """
    _check_chunks(chunks, "aiter_events")
    return _aiter_events(chunks, _decoder_for(decoder, comments, max_event_size))


async def _aiter_events(chunks: AsyncChunks, decoder: Decoder[T]) -> AsyncGenerator[T, None]:
    iterator = aiter(chunks)
    sniff: _Sniff | None = _Sniff()
    try:
        async for chunk in iterator:
            events = decoder.feed(chunk)
            if sniff is not None and not sniff.keep(chunk, events):
                sniff = None
            for event in events:
                yield event
        events = decoder.close()
        if sniff is not None and not events:
            sniff.check()
        for event in events:
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


def _check_chunks(chunks: object, name: str) -> None:
    if isinstance(chunks, bytes | bytearray | memoryview | str):
        kind = type(chunks).__name__
        hint = "encode it and wrap it: [text.encode()]" if kind == "str" else "wrap it: [body]"
        raise InputTypeError(
            f"{name} takes an iterable of byte chunks (a list of bytes, "
            f"response.iter_bytes()), not {kind}: {hint}",
            argument="chunks",
            got=kind,
        )


class _Sniff:
    """The start of a body, kept while it may be a JSON document rather than an event stream.

    An event stream never opens with ``{`` or ``[`` (such a line is a field
    the spec ignores), and an API's JSON error answer always does. Kept only
    until an event is dispatched or a byte rules it out (the first chunk, for
    any real stream), and at most :data:`SNIFF_LIMIT` bytes.
    """

    __slots__ = ("opened", "start")

    def __init__(self) -> None:
        self.start = bytearray()
        self.opened = False  # a "{" or "[" came before anything but whitespace

    def keep(self, chunk: bytes | bytearray | memoryview, events: list[T]) -> bool:
        """Keep ``chunk``; False once the body cannot be a JSON document without events."""
        if events or len(self.start) + len(chunk) > SNIFF_LIMIT:
            return False
        if not self.opened:
            head = bytes(chunk).lstrip(b" \t\r\n")
            if head:
                if head[0] not in b"{[":
                    return False
                self.opened = True
        self.start += chunk
        return True

    def check(self) -> None:
        """At the end of a body that dispatched nothing: raise if it was a JSON document."""
        if not self.opened:
            return
        try:
            json.loads(self.start)
        except ValueError:
            return
        text = self.start.decode("utf-8", "replace")
        raise NotAnEventStream(
            f"the body is a JSON document, not an event stream: {text[:200]!r}; "
            "an error answer, most likely: check the response status before reading events",
            text,
        )
