"""A typed library over ssekit, as an author would write one; mypy --strict checks it.

``assert_type`` pins what each call returns (it is a no-op when run), so a
looser type (``object``, ``Iterator``) fails the check.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any, assert_type

import ssekit
from ssekit.openai import Chunk, ChunkDelta


class Answer:
    """Reads an OpenAI-style stream from raw byte chunks it is fed."""

    def __init__(self) -> None:
        self.decoder = ssekit.Decoder()
        self.parts: list[str] = []

    def feed(self, chunk: bytes) -> None:
        for event in self.decoder.feed(chunk):
            assert_type(event, ssekit.Event)
            chunk_object = ssekit.parse_chunk(event)
            if chunk_object is None:
                continue
            delta = chunk_object["choices"][0]["delta"]
            assert_type(delta, ChunkDelta)
            content = delta.get("content")
            assert_type(content, str | None)
            if content:
                self.parts.append(content)


def first_delta(wire: Iterable[bytes]) -> str | None:
    with contextlib.closing(ssekit.iter_chunks(ssekit.iter_events(wire))) as chunks:
        for chunk in chunks:
            assert_type(chunk, Chunk)
            return chunk["choices"][0]["delta"].get("content")
    return None


async def first_role(wire: AsyncIterator[bytes]) -> str | None:
    # The README's advice: leave an async generator early inside aclosing().
    events = ssekit.aiter_events(wire)
    async with contextlib.aclosing(ssekit.aiter_chunks(events)) as chunks:
        async for chunk in chunks:
            return chunk["choices"][0]["delta"].get("role")
    return None


def payload(event: ssekit.Event) -> int:
    assert_type(event.json(), Any)
    count: int = event.json()["n"]
    return count


def text(chunks: list[Chunk], raw: list[dict[str, object]]) -> str:
    return ssekit.join_deltas(chunks) + ssekit.join_deltas(raw)


def usage(chunk: Chunk) -> int:
    spent = chunk.get("usage") or {}
    total: int = spent.get("total_tokens", 0)
    return total
