"""OpenAI-style streams: the ``[DONE]`` sentinel, chunk JSON, joined deltas.

A public module (``from ssekit.openai import iter_chunks``); its functions are
also re-exported at the top level. Beside the decoder, not inside it: these are
conventions of one API on top of SSE, not part of the event-stream format.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterable, Generator, Iterable, Mapping
from typing import Any, Final, TypedDict, cast

from ._errors import APIErrorEvent, ChunkError, StreamIncomplete
from ._event import Event

__all__ = (
    "DONE",
    "Chunk",
    "ChunkChoice",
    "ChunkDelta",
    "aiter_chunks",
    "iter_chunks",
    "join_deltas",
    "parse_chunk",
)

#: The data of the event that ends an OpenAI-style stream.
DONE: Final = "[DONE]"


# The chunk types say what the members are when present; nothing checks that
# they are (parse_chunk only checks for a JSON object), and providers leave
# members out: index where a member is always sent (choices, delta), use
# .get() where it may be missing. Any where the shape is open (tool calls,
# usage, logprobs).
class ChunkDelta(TypedDict, total=False):
    """``choices[i].delta``: what this chunk adds to the message."""

    role: str
    content: str | None
    refusal: str | None
    tool_calls: list[dict[str, Any]]
    function_call: dict[str, Any]
    #: DeepSeek's and other OpenAI-compatible servers' reasoning text.
    reasoning_content: str | None


class ChunkChoice(TypedDict, total=False):
    """One of a chunk's ``choices``."""

    index: int
    delta: ChunkDelta
    finish_reason: str | None
    logprobs: Any


class Chunk(TypedDict, total=False):
    """One decoded ``chat.completion.chunk`` object, as :func:`parse_chunk` returns it.

    ``chunk["choices"][0]["delta"].get("content")`` type-checks (``str | None``).
    """

    id: str
    object: str
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: dict[str, Any] | None
    system_fingerprint: str | None
    service_tier: str | None


def parse_chunk(event: Event) -> Chunk | None:
    """Return the JSON object an event carries (typed :class:`Chunk`), or None for ``[DONE]``.

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
    return cast(Chunk, obj)  # a JSON object; its members are not checked (see Chunk)


def iter_chunks(events: Iterable[Event]) -> Generator[Chunk, None, None]:
    """Yield each chunk object until ``[DONE]``, then stop.

    Raises :class:`StreamIncomplete` when the events end before ``[DONE]``
    (the answer was cut), and what :func:`parse_chunk` raises; over
    :func:`ssekit.iter_events`, :class:`ssekit.NotAnEventStream` when the
    body was a JSON error answer, not a stream. A generator: ``close()`` it
    (or use ``contextlib.closing``) to stop early. However it ends, ``events``'
    iterator is closed when it has a ``close()`` method (as
    :func:`ssekit.iter_events` closes its chunks), so the response under it is
    released.
    """
    iterator = iter(events)
    try:
        for event in iterator:
            chunk = parse_chunk(event)
            if chunk is None:
                return
            yield chunk
        raise _incomplete()
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


async def aiter_chunks(events: AsyncIterable[Event]) -> AsyncGenerator[Chunk, None]:
    """Async twin of :func:`iter_chunks`: the same chunks, stop and errors.

    An async generator: to stop early, iterate inside ``async with
    contextlib.aclosing(aiter_chunks(...)) as chunks`` (or ``await
    chunks.aclose()``). However it ends, ``events``' iterator is closed when it
    has an ``aclose()`` method (:func:`ssekit.aiter_events`' does, and closes
    its chunks in turn), so the connection under it is released at once.
    """
    iterator = aiter(events)
    try:
        async for event in iterator:
            chunk = parse_chunk(event)
            if chunk is None:
                return
            yield chunk
        raise _incomplete()
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


def _incomplete() -> StreamIncomplete:
    return StreamIncomplete(
        "the stream ended without data: [DONE]; the answer is incomplete (upstream cut?)"
    )


def join_deltas(chunks: Iterable[Mapping[str, object]], *, index: int = 0) -> str:
    """Join ``choices[index].delta.content`` over chunks into the answer text.

    In: :class:`Chunk` objects, or any JSON objects (``dict[str, object]``).
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
