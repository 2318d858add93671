"""The built-in OpenAI-compatible mock upstream."""

from __future__ import annotations

import httpx
import pytest
from _servers import deadline, raw_exchange, start_mock

import ssekit
from ssekit.proxy._mock import mock_text

# Every test on both HTTP/1.1 engines: the proxy and mock _servers starts run on it.
pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("http_engine")]
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


async def test_streamed_answer_ends_with_done_and_mixes_english_and_chinese() -> None:
    async with deadline(10) as tg:
        mock = await start_mock(tg, tokens=12, delay=0)
        async with httpx.AsyncClient() as client:
            response = await client.post(
                mock + "/v1/chat/completions", json={**CHAT, "stream": True}
            )
    assert response.headers["content-type"] == "text/event-stream"
    events = list(ssekit.iter_events([response.content]))
    assert events[-1] == ssekit.Event(data="[DONE]")
    text = ssekit.join_deltas(ssekit.iter_chunks(events))
    assert text == mock_text(12)
    assert "你好" in text
    assert "Hello" in text


async def test_plain_answer_models_and_errors_in_openai_shape() -> None:
    async with deadline(10) as tg:
        mock = await start_mock(tg, tokens=5, delay=0)
        async with httpx.AsyncClient() as client:
            plain = await client.post(mock + "/v1/chat/completions", json={**CHAT, "max_tokens": 3})
            models = await client.get(mock + "/v1/models")
            missing = await client.get(mock + "/v2/nothing")
            wrong_method = await client.get(mock + "/v1/chat/completions")
            bad_body = await client.post(mock + "/v1/chat/completions", content=b"{not json")
    assert plain.json()["choices"][0]["message"]["content"] == mock_text(3)
    assert models.json()["data"][0]["id"] == "ssekit-mock"
    for response, status in ((missing, 404), (wrong_method, 405), (bad_body, 400)):
        assert response.status_code == status
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


async def test_numbered_events_resume_after_last_event_id_and_can_be_cut() -> None:
    async with deadline(10) as tg:
        mock = await start_mock(tg, delay=0)
        async with httpx.AsyncClient() as client:
            resumed = await client.get(mock + "/v1/events?count=5", headers={"Last-Event-ID": "3"})
            events = list(ssekit.iter_events([resumed.content]))
            assert [e.id for e in events] == ["3", "4", "5"]
            assert events[0].retry == 500
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(mock + "/v1/events?count=5&cut_after=2")


async def test_the_mock_serves_on_the_engine_it_was_given(http_engine: str) -> None:
    """A chunk-size line with a 5 KB extension: h11 reads it (and the mock answers the
    body, not JSON, with a 400); ssekit's engine bounds such a line at 4 KiB, refuses the
    request, and the mock closes the connection unanswered, as for any malformed one."""
    request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    request += b"Transfer-Encoding: chunked\r\n\r\n2;" + b"e" * 5000 + b"\r\nhi\r\n0\r\n\r\n"
    async with deadline(10) as tg:
        mock = await start_mock(tg)
        response = await raw_exchange(mock, request)
    if http_engine == "h11":
        assert response.startswith(b"HTTP/1.1 400 Bad Request\r\n"), response[:200]
    else:
        assert response == b""
