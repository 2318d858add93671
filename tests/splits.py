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
    #: The limit named by the LimitExceeded raised, if any. ``items`` is then
    #: everything decoded before it: earlier feeds' events plus its ``events``.
    error: str | None = None


def feed_at(
    stream: bytes,
    cuts: Iterable[int],
    *,
    max_event_size: int | None = None,
    comments: bool = True,
) -> Result:
    """Feed ``stream`` cut at ``cuts`` (sorted, deduplicated, clipped), then close."""
    kwargs = {} if max_event_size is None else {"max_event_size": max_event_size}
    decoder = ssekit.Decoder(comments=comments, **kwargs)
    items: list[Event | Comment] = []
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(stream)}), len(stream)]
    try:
        for start, end in itertools.pairwise(bounds):
            items.extend(decoder.feed(stream[start:end]))
        items.extend(decoder.close())
    except ssekit.LimitExceeded as exc:
        return Result((*items, *exc.events), "", None, exc.limit)
    return Result(tuple(items), decoder.last_event_id, decoder.retry)


def feed_whole(
    stream: bytes, *, max_event_size: int | None = None, comments: bool = True
) -> Result:
    return feed_at(stream, (), max_event_size=max_event_size, comments=comments)


def feed_bytewise(
    stream: bytes, *, max_event_size: int | None = None, comments: bool = True
) -> Result:
    cuts = range(1, len(stream))
    return feed_at(stream, cuts, max_event_size=max_event_size, comments=comments)
