"""OpenAI-style streams: the ``[DONE]`` sentinel, chunk JSON, joined deltas.

A public module (``from ssekit.openai import iter_chunks``); its functions are
also re-exported at the top level. Beside the decoder, not inside it: these are
conventions of one API on top of SSE, not part of the event-stream format.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Final

from ._errors import APIErrorEvent, ChunkError, StreamIncomplete
from ._event import Event

__all__ = ("DONE", "Chunk", "aiter_chunks", "iter_chunks", "join_deltas", "parse_chunk")

#: The data of the event that ends an OpenAI-style stream.
DONE: Final = "[DONE]"

#: One decoded chunk object (``chat.completion.chunk``).
Chunk = dict[str, object]


def parse_chunk(event: Event) -> Chunk | None:
    """Return the JSON object an event carries, or None for ``[DONE]``.

    Raises :class:`ChunkError` when the data is not a JSON object, and
    :class:`APIErrorEvent` when it carries an ``error`` member (or the event
    type is ``error``): providers report failures mid-stream that way.
    """
    data = event.data
    if data == DONE:
        return None
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise ChunkError(
            f"event data is not JSON ({exc}): {data[:200]!r}; expected a chat.completion.chunk "
            "object or [DONE]"
        ) from exc
    if not isinstance(obj, dict):
        raise ChunkError(
            f"event data is JSON but not an object: {data[:200]!r}; expected a "
            "chat.completion.chunk object or [DONE]"
        )
    error = obj.get("error")
    if error is not None or event.event == "error":
        detail = error if isinstance(error, dict) else obj
        message = detail.get("message", "") if isinstance(detail, dict) else ""
        raise APIErrorEvent(f"the stream reported an error: {message or data[:200]}", detail)
    return obj


def iter_chunks(events: Iterable[Event]) -> Iterator[Chunk]:
    """Yield each chunk object until ``[DONE]``, then stop.

    Raises :class:`StreamIncomplete` when the events end before ``[DONE]``
    (the answer was cut), and what :func:`parse_chunk` raises.
    """
    for event in events:
        chunk = parse_chunk(event)
        if chunk is None:
            return
        yield chunk
    raise _incomplete()


async def aiter_chunks(events: AsyncIterable[Event]) -> AsyncIterator[Chunk]:
    """Async twin of :func:`iter_chunks`."""
    async for event in events:
        chunk = parse_chunk(event)
        if chunk is None:
            return
        yield chunk
    raise _incomplete()


def _incomplete() -> StreamIncomplete:
    return StreamIncomplete(
        "the stream ended without data: [DONE]; the answer is incomplete (upstream cut?)"
    )


def join_deltas(chunks: Iterable[Chunk], *, index: int = 0) -> str:
    """Join ``choices[index].delta.content`` over chunks into the answer text.

    Chunks without that choice, or with a null or missing content (role-only
    or finish chunks, usage chunks), contribute nothing.
    """
    parts: list[str] = []
    for chunk in chunks:
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            continue
        for choice in choices:
            if isinstance(choice, dict) and choice.get("index", 0) == index:
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    content = delta.get("content")
                    if isinstance(content, str):
                        parts.append(content)
    return "".join(parts)
