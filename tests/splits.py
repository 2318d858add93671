"""Feed a stream to a fresh decoder whole, byte by byte, or at given cuts."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import ssekit
from ssekit import Comment, Event


@dataclass(frozen=True)
class Result:
    items: tuple[Event | Comment, ...]
    last_event_id: str
    retry: int | None
    error: type[Exception] | None = None


def feed_at(stream: bytes, cuts: Iterable[int], *, max_event_size: int | None = None) -> Result:
    """Feed ``stream`` cut at ``cuts`` (sorted, deduplicated, clipped), then close."""
    kwargs = {} if max_event_size is None else {"max_event_size": max_event_size}
    decoder = ssekit.Decoder(comments=True, **kwargs)
    items: list[Event | Comment] = []
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(stream)}), len(stream)]
    try:
        for start, end in itertools.pairwise(bounds):
            items.extend(decoder.feed(stream[start:end]))
        items.extend(decoder.close())
    except ssekit.LimitExceeded:
        return Result((), "", None, ssekit.LimitExceeded)
    return Result(tuple(items), decoder.last_event_id, decoder.retry)


def feed_whole(stream: bytes, **kwargs: int) -> Result:
    return feed_at(stream, (), **kwargs)


def feed_bytewise(stream: bytes, **kwargs: int) -> Result:
    return feed_at(stream, range(1, len(stream)), **kwargs)
