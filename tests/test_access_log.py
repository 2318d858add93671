"""The access log as an operator reads it: when, from whom, what (issue 19, section 6).

Every line, text or JSON, carries the wall-clock time the request arrived and the
client's address; a request refused for too many connections still says its method
and path. The proxy runs in-process on 127.0.0.1; its records are read from caplog.
"""

from __future__ import annotations

import contextlib
import json
import logging
from datetime import UTC, datetime, timedelta

import anyio
import httpx
import pytest
from _servers import deadline, start_mock, start_proxy

pytestmark = pytest.mark.anyio
CHAT = {"model": "ssekit-mock", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def access_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "ssekit.proxy" and record.levelno == logging.INFO
    ]


def json_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    lines = []
    for message in access_records(caplog):
        with contextlib.suppress(ValueError):
            fields = json.loads(message)
            if isinstance(fields, dict) and "outcome" in fields:
                lines.append(fields)
    return lines


def text_fields(line: str) -> dict[str, str]:
    """The leading ``key=value`` fields of a text line, up to the first value with a space
    (only ``error`` has those, and it comes last)."""
    fields = {}
    for token in line.split(" "):
        key, sep, value = token.partition("=")
        if not sep:
            break
        fields[key] = value
    return fields


def arrived(stamp: object, before: datetime, after: datetime) -> bool:
    """``stamp`` is an ISO 8601 UTC time (``...Z``) between ``before`` and ``after``."""
    assert isinstance(stamp, str)
    assert stamp.endswith("Z")
    when = datetime.fromisoformat(stamp.removesuffix("Z") + "+00:00")
    # The stamp keeps milliseconds: allow for the rounding.
    return before - timedelta(milliseconds=1) <= when <= after + timedelta(milliseconds=1)


async def test_json_lines_carry_the_arrival_time_and_the_client_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ssekit.proxy")
    before = datetime.now(UTC)
    async with deadline(10) as tg:
        mock = await start_mock(tg, delay=0)
        base = await start_proxy(tg, mock, log_format="json")
        async with httpx.AsyncClient() as client:
            response = await client.post(base + "/v1/chat/completions", json=CHAT)
            assert response.status_code == 200
    after = datetime.now(UTC)
    [line] = json_lines(caplog)
    assert line["path"] == "/v1/chat/completions"
    assert line["client"] == "127.0.0.1"
    assert arrived(line["time"], before, after)


async def test_text_lines_open_with_the_time_and_the_client_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ssekit.proxy")
    before = datetime.now(UTC)
    async with deadline(10) as tg:
        mock = await start_mock(tg, delay=0)
        base = await start_proxy(tg, mock)
        async with httpx.AsyncClient() as client:
            assert (await client.get(base + "/v1/models")).status_code == 200
    after = datetime.now(UTC)
    [line] = [text_fields(m) for m in access_records(caplog) if "outcome" in text_fields(m)]
    assert list(line)[:2] == ["time", "client"]
    assert line["client"] == "127.0.0.1"
    assert line["path"] == "/v1/models"
    assert arrived(line["time"], before, after)


async def test_a_503_for_too_many_connections_says_method_path_and_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ssekit.proxy")
    async with deadline(10) as tg:
        mock = await start_mock(tg)
        base = await start_proxy(tg, mock, max_connections=1, log_format="json")
        port = int(base.rsplit(":", 1)[1])
        first = await anyio.connect_tcp("127.0.0.1", port)  # holds the only slot
        async with first:
            await first.send(b"GET /_ssekit/health HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b'{"status":"ok"}'):
                answer += await first.receive()
            second = await anyio.connect_tcp("127.0.0.1", port)
            async with second:
                await second.send(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
                refused = b""
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                    while True:
                        refused += await second.receive()
    assert refused.startswith(b"HTTP/1.1 503 ")
    [line] = [x for x in json_lines(caplog) if x["status"] == 503]
    assert line["outcome"] == "overloaded"
    assert (line["method"], line["path"], line["client"]) == (
        "POST",
        "/v1/chat/completions",
        "127.0.0.1",
    )
