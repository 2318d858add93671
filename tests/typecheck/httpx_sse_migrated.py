"""An httpx-sse script, migrated by changing its imports only; mypy --strict checks it.

It was written against httpx-sse 0.4 (``from httpx_sse import ...``,
``ServerSentEvent``, ``SSEError``) and passed ``mypy --strict`` there; the lines
marked ``# was:`` are the whole migration. ``main()`` runs it against a mock
transport, so tests/test_typecheck.py also checks that it works.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import httpx

# was: from httpx_sse import ServerSentEvent, SSEError, aconnect_sse, connect_sse
from ssekit import Event as ServerSentEvent
from ssekit import ResponseError as SSEError
from ssekit.httpx import aconnect_sse, connect_sse

CHAT = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def deltas(client: httpx.Client) -> Iterator[str]:
    """The content of each chunk, as httpx-sse's README reads an OpenAI stream."""
    with connect_sse(client, "POST", "/v1/chat/completions", json=CHAT) as event_source:
        for sse in event_source.iter_sse():
            if sse.data == "[DONE]":
                break
            # json() is Any, as httpx-sse's: indexing it type-checks.
            content = sse.json()["choices"][0]["delta"].get("content")
            if content:
                yield content


def last_id(events: list[ServerSentEvent]) -> str:
    return events[-1].id if events else ""


async def adeltas(client: httpx.AsyncClient) -> AsyncIterator[str]:
    async with aconnect_sse(client, "POST", "/v1/chat/completions", json=CHAT) as event_source:
        async with contextlib.aclosing(event_source.aiter_sse()) as events:
            async for sse in events:
                if sse.data == "[DONE]":
                    return
                data: dict[str, list[dict[str, dict[str, str]]]] = sse.json()
                yield data["choices"][0]["delta"].get("content", "")


def refused(client: httpx.Client) -> int | None:
    with connect_sse(client, "GET", "/v1/nothing") as event_source:
        try:
            list(event_source.iter_sse())
        except SSEError:
            return event_source.response.status_code
    return None


def server(request: httpx.Request) -> httpx.Response:
    if request.url.path != "/v1/chat/completions":
        return httpx.Response(404, json={"error": {"message": "not found"}})
    body = b"".join(
        b'data: {"choices":[{"index":0,"delta":{"content":"%s"}}]}\n\n' % word
        for word in (b"Hello", b", ", b"world")
    )
    return httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=body + b"data: [DONE]\n\n"
    )


def main() -> str:
    transport = httpx.MockTransport(server)
    with httpx.Client(transport=transport, base_url="http://api.test") as client:
        text = "".join(deltas(client))
        assert refused(client) == 404
    return text


async def amain() -> str:
    transport = httpx.MockTransport(server)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        return "".join([part async for part in adeltas(client)])
