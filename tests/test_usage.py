"""What every stream cost (issue 21): usage per key and model, time to first token, and cut
streams counted right.

The mock upstream reports exact usage (``ssekit.proxy._mock_apis.mock_usage``: prompt is
10 + the words of the request, cached half of it, completion the tokens it streamed):
every total here is checked against those numbers, through the proxy, with the real
``openai`` and ``anthropic`` SDKs and raw HTTP, from the access log, the usage log and
the metrics.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import anthropic
import anyio
import httpx
import openai
import pytest
from _servers import deadline, start_mock, start_proxy

from ssekit import Event
from ssekit.proxy._mock import mock_text
from ssekit.proxy._mock_apis import mock_usage
from ssekit.proxy._stats import Metrics, Outcome, StreamStats
from ssekit.proxy._usage import (
    Meter,
    Shape,
    UsageCounters,
    UsageLog,
    UsageSource,
    add_include_usage,
)

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "user", "content": "say hello to the ledger"}]  # 5 words: prompt 15
PROMPT = 15
CHAT_WITH_USAGE = {
    "model": "c",
    "stream": True,
    "messages": MESSAGES,
    "stream_options": {"include_usage": True},
}


def meter(shape: Shape) -> tuple[Meter, StreamStats]:
    stats = StreamStats(shape=shape)
    clock = iter(float(n) for n in range(1, 100))
    return Meter(shape, stats, 0.0, lambda: next(clock)), stats


def chat(obj: dict[str, Any]) -> Event:
    return Event(data=json.dumps(obj))


# -- reading usage, one shape at a time (no sockets) --


def test_chat_usage_is_read_from_the_last_chunk_and_the_first_token_skips_the_role_chunk() -> None:
    m, stats = meter(Shape.CHAT)
    m.see(chat({"model": "gpt-x", "choices": [{"delta": {"role": "assistant", "content": ""}}]}))
    assert stats.first_token is None
    m.see(chat({"choices": [{"delta": {"content": "Hi"}}], "usage": None}))
    assert stats.first_token == 1.0
    m.see(chat({"choices": [{"delta": {"content": "!"}}], "usage": None}))
    usage = {
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "total_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 2},
        "completion_tokens_details": {"reasoning_tokens": 1},
    }
    m.see(Event(data=json.dumps({"model": "gpt-x-2", "choices": [], "usage": usage}, indent=1)))
    m.see(Event(data="[DONE]"))
    assert stats.usage is UsageSource.REPORTED
    assert (stats.prompt_tokens, stats.completion_tokens) == (7, 3)
    assert (stats.cached_tokens, stats.reasoning_tokens) == (2, 1)
    assert stats.model == "gpt-x-2"


def test_a_tool_call_or_a_refusal_is_a_first_token_too() -> None:
    for delta in ({"tool_calls": [{"index": 0}]}, {"refusal": "no"}):
        m, stats = meter(Shape.CHAT)
        m.see(chat({"choices": [{"delta": delta}]}))
        assert stats.first_token == 1.0


def test_a_usage_word_inside_content_is_not_read_as_usage() -> None:
    m, stats = meter(Shape.CHAT)
    m.see(chat({"choices": [{"delta": {"content": "a"}}]}))
    m.see(chat({"choices": [{"delta": {"content": '"usage": {"prompt_tokens": 5}'}}]}))
    assert stats.usage is UsageSource.NONE
    assert stats.prompt_tokens is None


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -1, "completion_tokens": 3},
        {"prompt_tokens": 1.5, "completion_tokens": 3},
        {"prompt_tokens": "7", "completion_tokens": 3},
        {"prompt_tokens": True, "completion_tokens": 3},
        {"prompt_tokens": 7, "prompt_tokens_details": {"cached_tokens": -2}},
        [1, 2],
    ],
)
def test_a_non_integer_or_negative_count_makes_usage_invalid(usage: object) -> None:
    m, stats = meter(Shape.CHAT)
    m.see(chat({"choices": [{"delta": {"content": "a"}}]}))
    m.see(chat({"choices": [], "usage": usage}))
    assert stats.usage is UsageSource.INVALID
    assert stats.prompt_tokens is None
    assert stats.completion_tokens is None


def test_responses_usage_comes_from_the_completed_event() -> None:
    m, stats = meter(Shape.RESPONSES)
    m.see(Event(event="response.created", data='{"response": {"model": "m", "usage": null}}'))
    assert stats.first_token is None
    m.see(Event(event="response.output_text.delta", data='{"delta": "x"}'))
    assert stats.first_token == 1.0
    for kind in ("response.completed", "response.incomplete", "response.failed"):
        m, stats = meter(Shape.RESPONSES)
        usage = {
            "input_tokens": 9,
            "input_tokens_details": {"cached_tokens": 4},
            "output_tokens": 6,
            "output_tokens_details": {"reasoning_tokens": 2},
        }
        m.see(Event(event=kind, data=json.dumps({"response": {"model": "m2", "usage": usage}})))
        assert stats.usage is UsageSource.REPORTED
        assert (stats.prompt_tokens, stats.completion_tokens) == (9, 6)
        assert (stats.cached_tokens, stats.reasoning_tokens, stats.model) == (4, 2, "m2")


def test_anthropic_input_comes_from_message_start_and_output_from_the_last_delta() -> None:
    m, stats = meter(Shape.MESSAGES)
    start = {
        "message": {
            "model": "claude-x",
            "usage": {
                "input_tokens": 5,
                "cache_read_input_tokens": 3,
                "cache_creation_input_tokens": 2,
                "output_tokens": 1,
            },
        }
    }
    m.see(Event(event="message_start", data=json.dumps(start)))
    m.see(Event(event="ping", data='{"type": "ping"}'))
    assert stats.first_token is None
    assert (stats.prompt_tokens, stats.cached_tokens, stats.completion_tokens) == (10, 3, None)
    m.see(Event(event="content_block_delta", data="{}"))
    assert stats.first_token == 1.0
    m.see(Event(event="message_delta", data='{"usage": {"output_tokens": 4}}'))
    m.see(Event(event="message_delta", data='{"usage": {"output_tokens": 8}}'))
    assert (stats.prompt_tokens, stats.completion_tokens, stats.model) == (10, 8, "claude-x")


def test_a_non_streamed_json_answer_gives_its_usage_at_close() -> None:
    m, stats = meter(Shape.CHAT)
    body = json.dumps({"model": "g", "usage": {"prompt_tokens": 4, "completion_tokens": 2}})
    m.body(body[:10].encode())
    m.body(body[10:].encode())
    m.close()
    assert (stats.usage, stats.prompt_tokens, stats.completion_tokens) == (
        UsageSource.REPORTED,
        4,
        2,
    )


def test_include_usage_is_added_only_to_streaming_json_that_lacks_it() -> None:
    added = add_include_usage(b'{"model": "m", "stream": true, "messages": []}')
    assert added is not None
    assert json.loads(added)["stream_options"] == {"include_usage": True}
    assert add_include_usage(b'{"stream": false}') is None
    assert (
        add_include_usage(b'{"stream": true, "stream_options": {"include_usage": false}}') is None
    )
    assert add_include_usage(b"not json") is None
    kept = add_include_usage(b'{"stream": true, "stream_options": {"x": 1}}')
    assert kept is not None
    assert json.loads(kept)["stream_options"] == {
        "x": 1,
        "include_usage": True,
    }


def test_token_counters_sum_across_workers_and_bound_models() -> None:
    one = Metrics()
    one.usage.max_models = 2
    for model in ("a", "b", "c"):
        stats = StreamStats(shape=Shape.CHAT, model=model, key_label="team")
        stats.usage, stats.prompt_tokens, stats.completion_tokens = UsageSource.REPORTED, 10, 1
        one.record(stats)
    assert one.usage.tokens[("prompt", "other", "team")] == 10
    two = Metrics()
    stats = StreamStats(shape=Shape.CHAT, model="a", key_label="team", outcome=Outcome.COMPLETE)
    stats.usage, stats.prompt_tokens = UsageSource.REPORTED, 5
    two.record(stats)
    total = one.plus([json.loads(json.dumps(two.snapshot()))])
    assert total.usage.tokens[("prompt", "a", "team")] == 15
    assert total.usage.exchanges[("reported", "complete")] == 4
    rendered = parse_metrics(total.render().decode())
    assert (
        rendered[("ssekit_tokens_total", (("key", "team"), ("kind", "prompt"), ("model", "a")))]
        == 15
    )


def test_the_usage_log_reopens_after_rotation_and_counts_what_it_cannot_write(
    tmp_path: Path,
) -> None:
    counters = UsageCounters()
    path = tmp_path / "usage.jsonl"
    usage_log = UsageLog(str(path), counters, "json")
    usage_log.write({"n": 1})
    path.rename(tmp_path / "usage.jsonl.1")
    usage_log.write({"n": 2})  # still the rotated file, until reopened
    usage_log.reopen()
    usage_log.write({"n": 3})
    assert [
        json.loads(line)["n"] for line in (tmp_path / "usage.jsonl.1").read_text().splitlines()
    ] == [1, 2]
    assert [json.loads(line)["n"] for line in path.read_text().splitlines()] == [3]
    assert counters.log_errors == 0
    broken = UsageLog(str(tmp_path / "missing" / "usage.jsonl"), counters, "json")
    broken.write({"n": 4})
    broken.write({"n": 5})
    assert counters.log_errors == 3  # the open, and both lines
    usage_log.close()


# -- through the proxy --


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    series = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            base, _, labels = name.partition("{")
            pairs = tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels)))
            series[(base, pairs)] = float(value)
    return series


async def tokens_metric(base: str) -> dict[tuple[str, str, str], float]:
    """ssekit_tokens_total by (kind, model, key)."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(base + "/_ssekit/metrics")).text
    found = {}
    for (name, labels), value in parse_metrics(text).items():
        if name == "ssekit_tokens_total":
            d = dict(labels)
            found[(d["kind"], d["model"], d["key"])] = value
    return found


async def usage_exchanges(base: str) -> dict[tuple[str, str], float]:
    async with httpx.AsyncClient() as client:
        text = (await client.get(base + "/_ssekit/metrics")).text
    return {
        (dict(labels)["usage"], dict(labels)["outcome"]): value
        for (name, labels), value in parse_metrics(text).items()
        if name == "ssekit_usage_exchanges_total"
    }


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    lines = []
    for record in caplog.records:
        if record.name == "ssekit.proxy" and record.levelno == logging.INFO:
            with contextlib.suppress(ValueError):
                fields = json.loads(record.getMessage())
                if isinstance(fields, dict) and "outcome" in fields and "usage" in fields:
                    lines.append(fields)
    return lines


def usage_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def wait_for_lines(path: Path, count: int) -> list[dict[str, Any]]:
    """The usage log once it holds ``count`` lines (the exchange ends after the client)."""
    for _ in range(200):
        if len(usage_lines(path) if path.exists() else []) >= count:  # noqa: ASYNC240 (tiny file)
            break
        await anyio.sleep(0.02)
    return usage_lines(path)


async def test_openai_chat_stream_usage_reaches_the_access_log_usage_log_and_metrics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="ssekit.proxy")
    log_path = tmp_path / "usage.jsonl"
    async with deadline(30) as tg:
        mock = await start_mock(tg, tokens=6, delay=0.01)
        base = await start_proxy(
            tg,
            mock,
            usage_log=str(log_path),
            log_format="json",
            api_keys=("sk-a", "sk-b"),
            api_key_labels=("team-a", "team-b"),
        )
        sdk = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        async with sdk:
            for model in ("gpt-a", "gpt-b"):
                stream = await sdk.chat.completions.create(
                    model=model,
                    messages=MESSAGES,  # type: ignore[arg-type]
                    stream=True,
                    stream_options={"include_usage": True},
                )
                chunks = [c async for c in stream]
                assert chunks[-1].usage is not None
                assert chunks[-1].usage.prompt_tokens == PROMPT
        lines = await wait_for_lines(log_path, 2)
        tokens = await tokens_metric(base)
    expected = mock_usage({"messages": MESSAGES}, 6)
    assert (expected.prompt, expected.completion, expected.cached) == (PROMPT, 6, 7)
    # Keys rotate: the first request goes out with the second key.
    assert tokens == {
        ("prompt", "gpt-a", "team-b"): PROMPT,
        ("completion", "gpt-a", "team-b"): 6,
        ("cached", "gpt-a", "team-b"): 7,
        ("prompt", "gpt-b", "team-a"): PROMPT,
        ("completion", "gpt-b", "team-a"): 6,
        ("cached", "gpt-b", "team-a"): 7,
    }
    assert [(line["model"], line["key"]) for line in lines] == [
        ("gpt-a", "team-b"),
        ("gpt-b", "team-a"),
    ]
    for line in lines:
        assert line["usage"] == "reported"
        assert line["outcome"] == "complete"
        assert line["partial"] is False
        assert (line["prompt_tokens"], line["completion_tokens"]) == (PROMPT, 6)
        assert (line["cached_tokens"], line["reasoning_tokens"]) == (7, 0)
        assert isinstance(line["first_token_ms"], float)
        assert isinstance(line["request_id"], str)
        assert line["request_id"]
    access = access_lines(caplog)
    assert [(a["model"], a["prompt_tokens"], a["completion_tokens"]) for a in access] == [
        ("gpt-a", PROMPT, 6),
        ("gpt-b", PROMPT, 6),
    ]
    assert all(a["ttft_ms"] >= a["first_event_ms"] for a in access)


async def test_time_to_first_token_skips_the_role_chunk(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ssekit.proxy")
    async with deadline(30) as tg:
        mock = await start_mock(tg, tokens=2, delay=0.3)
        base = await start_proxy(tg, mock, log_format="json")
        async with httpx.AsyncClient() as client:
            body = {"model": "m", "stream": True, "messages": MESSAGES}
            response = await client.post(base + "/v1/chat/completions", json=body)
            assert response.status_code == 200
        await anyio.sleep(0.05)
    (line,) = access_lines(caplog)
    # The role chunk comes at once, the first token after the mock's 0.3 s delay.
    assert line["ttft_ms"] >= line["first_event_ms"] + 290
    assert line["usage"] == "none"  # not asked for: nothing reported, nothing guessed
    assert line["prompt_tokens"] is None


async def test_include_usage_makes_the_provider_report_it(tmp_path: Path) -> None:
    log_path = tmp_path / "usage.jsonl"
    async with deadline(30) as tg:
        mock = await start_mock(tg, tokens=5, delay=0.0)
        base = await start_proxy(tg, mock, include_usage=True, usage_log=str(log_path))
        sdk = openai.AsyncOpenAI(base_url=base + "/v1", api_key="sk-x", max_retries=0)
        async with sdk:
            stream = await sdk.chat.completions.create(
                model="m",
                messages=MESSAGES,
                stream=True,  # type: ignore[arg-type]
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        (line,) = await wait_for_lines(log_path, 1)
        tokens = await tokens_metric(base)
    assert text == mock_text(5)
    assert (line["usage"], line["prompt_tokens"], line["completion_tokens"]) == (
        "reported",
        PROMPT,
        5,
    )
    assert line["key"] is None
    assert tokens[("completion", "m", "none")] == 5


async def test_responses_api_usage_through_the_openai_sdk(tmp_path: Path) -> None:
    log_path = tmp_path / "usage.jsonl"
    async with deadline(30) as tg:
        mock = await start_mock(tg, tokens=7, delay=0.0)
        base = await start_proxy(tg, mock, usage_log=str(log_path))
        sdk = openai.AsyncOpenAI(base_url=base + "/v1", api_key="sk-x", max_retries=0)
        async with sdk:
            stream = await sdk.responses.create(
                model="resp-model", input="one two three", stream=True, reasoning={"effort": "low"}
            )
            events = [e async for e in stream]
            plain = await sdk.responses.create(
                model="resp-model", input="one two three", reasoning={"effort": "low"}
            )
        lines = await wait_for_lines(log_path, 2)
        tokens = await tokens_metric(base)
    assert events[-1].type == "response.completed"
    assert plain.usage is not None
    assert plain.usage.input_tokens == 13
    # prompt 10 + 3 words; 7 visible + 4 reasoning tokens
    for line in lines:
        assert (line["prompt_tokens"], line["completion_tokens"]) == (13, 11)
        assert (line["cached_tokens"], line["reasoning_tokens"]) == (6, 4)
        assert line["model"] == "resp-model"
    assert [line["first_token_ms"] is not None for line in lines] == [True, False]
    assert tokens[("reasoning", "resp-model", "none")] == 8
    assert tokens[("prompt", "resp-model", "none")] == 26


async def test_anthropic_messages_usage_through_the_anthropic_sdk(tmp_path: Path) -> None:
    log_path = tmp_path / "usage.jsonl"
    async with deadline(30) as tg:
        mock = await start_mock(tg, tokens=9, delay=0.0)
        base = await start_proxy(tg, mock, usage_log=str(log_path))
        sdk = anthropic.AsyncAnthropic(base_url=base, api_key="sk-ant-x", max_retries=0)
        async with sdk:
            stream = await sdk.messages.create(
                model="claude-mock",
                max_tokens=100,
                messages=[{"role": "user", "content": "a b c d"}],
                stream=True,
            )
            kinds = [event.type async for event in stream]
            whole = await sdk.messages.create(
                model="claude-mock",
                max_tokens=100,
                messages=[{"role": "user", "content": "a b c d"}],
            )
        lines = await wait_for_lines(log_path, 2)
    assert kinds[-1] == "message_stop"
    assert whole.usage.output_tokens == 9
    for line in lines:  # prompt 10 + 4 words, 7 of them read from the cache
        assert (line["prompt_tokens"], line["cached_tokens"], line["completion_tokens"]) == (
            14,
            7,
            9,
        )
        assert line["usage"] == "reported"
        assert line["model"] == "claude-mock"


async def test_an_upstream_cut_is_partial_with_what_was_reported(tmp_path: Path) -> None:
    log_path = tmp_path / "usage.jsonl"
    async with deadline(30) as tg:
        mock = await start_mock(tg, tokens=8, delay=0.0)
        base = await start_proxy(tg, mock, usage_log=str(log_path))
        async with httpx.AsyncClient() as client:
            for path, body in (
                ("/v1/chat/completions", CHAT_WITH_USAGE),
                ("/v1/messages", {"model": "a", "stream": True, "max_tokens": 50,
                                  "messages": MESSAGES}),
            ):  # fmt: skip
                with contextlib.suppress(httpx.HTTPError):
                    await client.post(base + path + "?cut_after=3", json=body)
        chat_line, messages_line = await wait_for_lines(log_path, 2)
        exchanges = await usage_exchanges(base)
    assert chat_line["partial"] is True
    assert messages_line["partial"] is True
    assert chat_line["outcome"] == messages_line["outcome"] == "upstream_cut"
    assert (chat_line["usage"], chat_line["prompt_tokens"]) == ("none", None)
    # Anthropic said the input at the start; the output never came: not guessed.
    assert (messages_line["usage"], messages_line["prompt_tokens"]) == ("reported", PROMPT)
    assert messages_line["completion_tokens"] is None
    assert exchanges == {("none", "upstream_cut"): 1, ("reported", "upstream_cut"): 1}


async def cut_by_client(base: str, path: str, body: dict[str, Any], after: int) -> None:
    """Read ``after`` events of a streamed answer, then leave."""
    async with httpx.AsyncClient() as client:
        async with client.stream("POST", base + path, json=body) as response:
            seen = 0
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    seen += 1
                    if seen >= after:
                        break


RESPONSES_BODY = {"model": "r", "stream": True, "input": "say hello to the ledger"}


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/chat/completions", CHAT_WITH_USAGE), ("/v1/responses", RESPONSES_BODY)],
)
async def test_a_client_that_leaves_under_cancel_is_partial_and_billed_nothing_read(
    tmp_path: Path, path: str, body: dict[str, Any]
) -> None:
    log_path = tmp_path / "usage.jsonl"
    async with deadline(30) as tg:
        mock = await start_mock(tg, tokens=20, delay=0.02)
        base = await start_proxy(tg, mock, usage_log=str(log_path))
        await cut_by_client(base, path, body, 3)
        (line,) = await wait_for_lines(log_path, 1)
        tokens = await tokens_metric(base)
    assert (line["outcome"], line["partial"], line["usage"]) == ("client_disconnect", True, "none")
    assert tokens == {}


MESSAGES_BODY = {"model": "a", "stream": True, "max_tokens": 100, "messages": MESSAGES}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", CHAT_WITH_USAGE),
        ("/v1/responses", RESPONSES_BODY),
        ("/v1/messages", MESSAGES_BODY),
    ],
)
async def test_a_client_that_leaves_under_finish_is_billed_what_the_provider_generated(
    tmp_path: Path, path: str, body: dict[str, Any]
) -> None:
    log_path = tmp_path / "usage.jsonl"
    async with deadline(30) as tg:
        mock = await start_mock(tg, tokens=20, delay=0.02)
        base = await start_proxy(
            tg, mock, usage_log=str(log_path), on_client_disconnect="finish", finish_timeout=10.0
        )
        await cut_by_client(base, path, body, 3)
        (line,) = await wait_for_lines(log_path, 1)
        tokens = await tokens_metric(base)
        exchanges = await usage_exchanges(base)
    model = body["model"]
    assert (line["outcome"], line["partial"], line["usage"]) == (
        "client_disconnect",
        False,
        "reported",
    )
    assert (line["prompt_tokens"], line["completion_tokens"]) == (PROMPT, 20)
    assert line["events_delivered"] < line["events"]
    assert tokens[("completion", model, "none")] == 20
    assert tokens[("prompt", model, "none")] == PROMPT
    assert exchanges == {("reported", "client_disconnect"): 1}


async def test_finish_gives_up_after_the_finish_timeout(tmp_path: Path) -> None:
    log_path = tmp_path / "usage.jsonl"
    async with deadline(30) as tg:
        mock = await start_mock(tg, tokens=200, delay=0.02)
        base = await start_proxy(
            tg, mock, usage_log=str(log_path), on_client_disconnect="finish", finish_timeout=0.3
        )
        await cut_by_client(base, "/v1/chat/completions", CHAT_WITH_USAGE, 3)
        (line,) = await wait_for_lines(log_path, 1)
    assert (line["outcome"], line["partial"], line["usage"]) == ("client_disconnect", True, "none")
    assert line["duration_ms"] < 3000


async def test_a_non_streamed_chat_answer_is_counted_from_its_json(tmp_path: Path) -> None:
    log_path = tmp_path / "usage.jsonl"
    async with deadline(30) as tg:
        mock = await start_mock(tg, tokens=4, delay=0.0)
        base = await start_proxy(tg, mock, usage_log=str(log_path))
        sdk = openai.AsyncOpenAI(base_url=base + "/v1", api_key="sk-x", max_retries=0)
        async with sdk:
            answer = await sdk.chat.completions.create(model="j", messages=MESSAGES)  # type: ignore[arg-type]
        (line,) = await wait_for_lines(log_path, 1)
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 4
    assert (line["usage"], line["prompt_tokens"], line["completion_tokens"]) == (
        "reported",
        PROMPT,
        4,
    )
    assert line["first_token_ms"] is None


async def test_other_paths_have_usage_none_and_invalid_counts_are_counted(tmp_path: Path) -> None:
    from _servers import LAST_CHUNK, SSE_HEAD, chunk, start_upstream

    async def bad_usage(stream: Any, seen: Any) -> None:
        await stream.send(SSE_HEAD)
        for data in (
            {"choices": [{"delta": {"content": "x"}}]},
            {"choices": [], "usage": {"prompt_tokens": -3, "completion_tokens": 1}},
        ):
            await stream.send(chunk(b"data: " + json.dumps(data).encode() + b"\n\n"))
        await stream.send(LAST_CHUNK)

    log_path = tmp_path / "usage.jsonl"
    async with deadline(30) as tg:
        upstream, _ = await start_upstream(tg, bad_usage)
        base = await start_proxy(tg, upstream, usage_log=str(log_path))
        async with httpx.AsyncClient() as client:
            response = await client.post(base + "/v1/chat/completions", json={"model": "z"})
            assert response.status_code == 200
            await client.get(base + "/v1/models")  # another path: forwarded, usage none
        lines = await wait_for_lines(log_path, 2)
        exchanges = await usage_exchanges(base)
    assert [line["usage"] for line in lines] == ["invalid", "none"]
    assert lines[0]["prompt_tokens"] is None
    assert exchanges == {("invalid", "complete"): 1}


async def test_an_anthropic_stream_the_client_leaves_under_cancel_keeps_only_its_input(
    tmp_path: Path,
) -> None:
    log_path = tmp_path / "usage.jsonl"
    async with deadline(30) as tg:
        mock = await start_mock(tg, tokens=20, delay=0.02)
        base = await start_proxy(tg, mock, usage_log=str(log_path))
        await cut_by_client(base, "/v1/messages", MESSAGES_BODY, 4)
        (line,) = await wait_for_lines(log_path, 1)
        tokens = await tokens_metric(base)
    assert (line["outcome"], line["partial"], line["usage"]) == (
        "client_disconnect",
        True,
        "reported",
    )
    assert (line["prompt_tokens"], line["completion_tokens"]) == (PROMPT, None)
    assert tokens == {("prompt", "a", "none"): PROMPT, ("cached", "a", "none"): 7}


async def test_with_a_resume_store_a_departed_client_s_stream_is_read_and_billed_whole(
    tmp_path: Path,
) -> None:
    log_path = tmp_path / "usage.jsonl"
    async with deadline(30) as tg:
        mock = await start_mock(tg, tokens=20, delay=0.02)
        base = await start_proxy(tg, mock, usage_log=str(log_path), resume_store="memory")
        await cut_by_client(base, "/v1/chat/completions", CHAT_WITH_USAGE, 3)
        (line,) = await wait_for_lines(log_path, 1)
    assert line["usage"] == "reported"
    assert (line["prompt_tokens"], line["completion_tokens"]) == (PROMPT, 20)
    assert isinstance(line["stream_id"], str)
    assert line["stream_id"]


async def test_include_usage_rewrites_only_streamed_chat_bodies_and_their_length() -> None:
    from _servers import start_upstream

    async def answer(stream: Any, seen: Any) -> None:
        await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")

    streamed = json.dumps({"model": "m", "stream": True, "messages": MESSAGES}).encode()
    plain = json.dumps({"model": "m", "stream": False, "messages": MESSAGES}).encode()
    async with deadline(30) as tg:
        upstream, seen = await start_upstream(tg, answer)
        base = await start_proxy(tg, upstream, include_usage=True)
        async with httpx.AsyncClient() as client:
            for body in (streamed, plain):
                headers = {"content-type": "application/json"}
                response = await client.post(
                    base + "/v1/chat/completions", content=body, headers=headers
                )
                assert response.status_code == 200
            await client.post(base + "/v1/embeddings", content=streamed, headers=headers)
    bodies = [request.partition(b"\r\n\r\n")[2] for request in seen.requests]
    lengths = [seen.header(b"content-length", i) for i in range(3)]
    assert json.loads(bodies[0]) == {
        **json.loads(streamed),
        "stream_options": {"include_usage": True},
    }
    assert lengths[0] == str(len(bodies[0])).encode()
    assert bodies[1:] == [plain, streamed]  # unchanged: not streamed, not a chat path
    assert lengths[1:] == [str(len(plain)).encode(), str(len(streamed)).encode()]


async def test_client_tokens_are_labelled_in_the_usage_log(tmp_path: Path) -> None:
    log_path = tmp_path / "usage.jsonl"
    async with deadline(30) as tg:
        mock = await start_mock(tg, tokens=3, delay=0.0)
        base = await start_proxy(
            tg,
            mock,
            usage_log=str(log_path),
            client_tokens=("tok-one", "tok-two"),
            client_token_labels=("alice", "bob"),
        )
        async with httpx.AsyncClient() as client:
            for token in ("tok-two", "tok-one"):
                response = await client.post(
                    base + "/v1/chat/completions",
                    json={"model": "m", "messages": MESSAGES},
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert response.status_code == 200
        lines = await wait_for_lines(log_path, 2)
    assert [line["client_token"] for line in lines] == ["bob", "alice"]
    assert [line["completion_tokens"] for line in lines] == [3, 3]
    assert all("tok-" not in json.dumps(line) for line in lines)


async def test_the_text_access_log_carries_the_usage_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ssekit.proxy")
    async with deadline(30) as tg:
        mock = await start_mock(tg, tokens=4, delay=0.0)
        base = await start_proxy(tg, mock, include_usage=True)
        async with httpx.AsyncClient() as client:
            body = {"model": "txt", "stream": True, "messages": MESSAGES}
            response = await client.post(base + "/v1/chat/completions", json=body)
            assert response.status_code == 200
        await anyio.sleep(0.05)
    texts = [
        record.getMessage()
        for record in caplog.records
        if record.name == "ssekit.proxy" and "outcome=" in record.getMessage()
    ]
    (line,) = texts
    fields = dict(token.partition("=")[::2] for token in line.split(" "))
    assert (fields["model"], fields["usage"]) == ("txt", "reported")
    assert (fields["prompt_tokens"], fields["completion_tokens"]) == (str(PROMPT), "4")
    assert float(fields["ttft_ms"]) >= float(fields["first_event_ms"])
    assert "partial" not in fields  # only said when true
