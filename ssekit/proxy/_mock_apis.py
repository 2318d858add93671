"""The mock upstream's usage, and its Responses API and Anthropic Messages answers.

Usage is exact and known in advance (:func:`mock_usage`), so tests and demos can
check a ledger against it:

    completion   the answer's tokens (``--tokens``, capped by max_tokens /
                 max_output_tokens), plus the reasoning tokens
    prompt       10 + the words (split on whitespace) of every text in the request's
                 messages, input and system
    cached       prompt // 2 (a part of prompt)
    reasoning    4 when the request sets reasoning_effort or reasoning, else 0

    POST /v1/responses   {"stream": true}: response.created ... response.output_text.delta
                         ... response.completed with response.usage; else one JSON response
    POST /v1/messages    {"stream": true}: message_start (input and cache tokens),
                         content_block_start, ping, content_block_delta..., content_block_stop,
                         message_delta (output tokens), message_stop; else one JSON message

Any POST streaming route takes ``?cut_after=K``: the connection is cut abruptly after K
content events (no usage, no end).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import anyio

from .._event import Event
from .._writer import EventWriter

__all__ = ("MockUsage", "mock_usage", "serve_messages", "serve_responses")

Token = Callable[[int], str]
#: Reasoning tokens the mock reports when the request asks for reasoning.
REASONING_TOKENS: Final = 4


@dataclass(frozen=True, slots=True)
class MockUsage:
    """The counts the mock reports for one answer."""

    prompt: int
    completion: int
    cached: int
    reasoning: int


def _texts(value: object) -> list[str]:
    """Every text in a request's messages / input / system (strings, content parts)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [text for item in value for text in _texts(item)]
    if isinstance(value, dict):
        texts = []
        for key in ("content", "text"):
            if key in value:
                texts += _texts(value[key])
        return texts
    return []


def mock_usage(params: dict[str, Any], visible: int) -> MockUsage:
    """The usage the mock reports for request ``params`` answered with ``visible`` tokens."""
    words = sum(
        len(text.split())
        for key in ("messages", "input", "system")
        for text in _texts(params.get(key))
    )
    prompt = 10 + words
    reasoning = REASONING_TOKENS if ("reasoning_effort" in params or "reasoning" in params) else 0
    return MockUsage(
        prompt=prompt, completion=visible + reasoning, cached=prompt // 2, reasoning=reasoning
    )


def chat_usage(usage: MockUsage) -> dict[str, object]:
    return {
        "prompt_tokens": usage.prompt,
        "completion_tokens": usage.completion,
        "total_tokens": usage.prompt + usage.completion,
        "prompt_tokens_details": {"cached_tokens": usage.cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning, "audio_tokens": 0},
    }


def _responses_usage(usage: MockUsage) -> dict[str, object]:
    return {
        "input_tokens": usage.prompt,
        "input_tokens_details": {"cached_tokens": usage.cached},
        "output_tokens": usage.completion,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning},
        "total_tokens": usage.prompt + usage.completion,
    }


def _data(obj: dict[str, object], event: str | None = None) -> Event:
    text = json.dumps(obj, ensure_ascii=False)
    return Event(data=text) if event is None else Event(data=text, event=event)


Answer = Callable[[int, bytes], Awaitable[None]]


async def serve_responses(
    writer: Callable[[], Awaitable[EventWriter]],
    answer: Answer,
    params: dict[str, Any],
    *,
    model: str,
    tokens: int,
    token: Token,
    delay: float,
    cut_after: int | None,
) -> bool:
    """POST /v1/responses; False when the connection was cut (``cut_after``)."""
    usage = mock_usage(params, tokens)
    text = "".join(token(i) for i in range(tokens))
    created = int(time.time())
    message = {
        "id": "msg_ssekit",
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }

    def response(status: str, output: list[object], with_usage: bool) -> dict[str, object]:
        return {
            "id": "resp_ssekit",
            "object": "response",
            "created_at": created,
            "status": status,
            "model": model,
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": _responses_usage(usage) if with_usage else None,
        }

    if not params.get("stream"):
        await answer(200, json.dumps(response("completed", [message], True)).encode())
        return True
    out = await writer()
    seq = 0

    async def send(kind: str, **fields: object) -> None:
        nonlocal seq
        await out.send(_data({"type": kind, "sequence_number": seq, **fields}, kind))
        seq += 1

    await send("response.created", response=response("in_progress", [], False))
    await send("response.in_progress", response=response("in_progress", [], False))
    item = {**message, "status": "in_progress", "content": []}
    await send("response.output_item.added", output_index=0, item=item)
    part = {"type": "output_text", "text": "", "annotations": []}
    ids = {"item_id": "msg_ssekit", "output_index": 0, "content_index": 0}
    await send("response.content_part.added", **ids, part=part)
    for i in range(tokens):
        if cut_after is not None and i >= cut_after:
            return False
        await anyio.sleep(delay)
        await send("response.output_text.delta", **ids, delta=token(i), logprobs=[])
    await send("response.output_text.done", **ids, text=text, logprobs=[])
    await send("response.content_part.done", **ids, part={**part, "text": text})
    await send("response.output_item.done", output_index=0, item=message)
    await send("response.completed", response=response("completed", [message], True))
    await out.aclose()
    return True


async def serve_messages(
    writer: Callable[[], Awaitable[EventWriter]],
    answer: Answer,
    params: dict[str, Any],
    *,
    model: str,
    tokens: int,
    token: Token,
    delay: float,
    cut_after: int | None,
) -> bool:
    """POST /v1/messages (Anthropic); False when the connection was cut (``cut_after``).

    Input tokens are split as Anthropic does: ``input_tokens`` the uncached part,
    ``cache_read_input_tokens`` the cached one (no cache writes)."""
    usage = mock_usage(params, tokens)
    text = "".join(token(i) for i in range(tokens))
    message: dict[str, object] = {
        "id": "msg_ssekit",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.prompt - usage.cached,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": usage.cached,
            "output_tokens": 1,
        },
    }
    if not params.get("stream"):
        whole = {
            **message,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "usage": {**message["usage"], "output_tokens": usage.completion},  # type: ignore[dict-item]
        }
        await answer(200, json.dumps(whole, ensure_ascii=False).encode())
        return True
    out = await writer()

    async def send(kind: str, **fields: object) -> None:
        await out.send(_data({"type": kind, **fields}, kind))

    await send("message_start", message=message)
    await send("content_block_start", index=0, content_block={"type": "text", "text": ""})
    await send("ping")
    for i in range(tokens):
        if cut_after is not None and i >= cut_after:
            return False
        await anyio.sleep(delay)
        await send("content_block_delta", index=0, delta={"type": "text_delta", "text": token(i)})
    await send("content_block_stop", index=0)
    await send(
        "message_delta",
        delta={"stop_reason": "end_turn", "stop_sequence": None},
        usage={"output_tokens": usage.completion},
    )
    await send("message_stop")
    await out.aclose()
    return True
