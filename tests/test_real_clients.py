"""Real clients through the proxy to the built-in mock: the openai SDK, httpx, curl."""

from __future__ import annotations

import shutil
import subprocess
import time

import anyio
import httpx
import openai
import pytest
from _servers import deadline, start_mock, start_proxy

import ssekit
from ssekit.proxy._mock import mock_text

# Every test on both HTTP/1.1 engines: the proxy and mock _servers starts run on it.
pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("http_engine")]
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("heartbeat", [None, 0.01])
async def test_async_openai_sdk_streams_through_the_proxy(heartbeat: float | None) -> None:
    async with deadline(30) as tg:
        mock = await start_mock(tg, tokens=12, delay=0.03)
        base = await start_proxy(tg, mock, heartbeat=heartbeat)
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
        async with client:
            stream = await client.chat.completions.create(
                model="ssekit-mock",
                messages=MESSAGES,
                stream=True,  # type: ignore[arg-type]
            )
            parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        async with httpx.AsyncClient() as plain:
            metrics = (await plain.get(base + "/_ssekit/metrics")).text
    assert "".join(parts) == mock_text(12)
    assert len(parts) >= 12  # token by token, not one blob
    if heartbeat is None:
        assert "ssekit_events_total 15" in metrics  # role + 12 tokens + stop + [DONE]


def test_sync_openai_sdk_streams_and_completes_through_the_proxy() -> None:
    async def main() -> None:
        async with deadline(30) as tg:
            mock = await start_mock(tg, tokens=8, delay=0.01)
            base = await start_proxy(tg, mock)

            def use_sdk() -> tuple[str, str]:
                client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
                with client:
                    stream = client.chat.completions.create(
                        model="ssekit-mock",
                        messages=MESSAGES,
                        stream=True,  # type: ignore[arg-type]
                    )
                    streamed = "".join(c.choices[0].delta.content or "" for c in stream)
                    plain = client.chat.completions.create(
                        model="ssekit-mock",
                        messages=MESSAGES,  # type: ignore[arg-type]
                    )
                return streamed, plain.choices[0].message.content or ""

            streamed, plain = await anyio.to_thread.run_sync(use_sdk)
        assert streamed == mock_text(8)
        assert plain == mock_text(8)

    anyio.run(main)


async def test_openai_sdk_sees_upstream_errors_in_openai_shape() -> None:
    async with deadline(30) as tg:
        mock = await start_mock(tg)
        base = await start_proxy(tg, mock)
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
        async with client:
            with pytest.raises(openai.BadRequestError) as info:
                await client.chat.completions.create(model="m", messages="nope")  # type: ignore[arg-type]
    assert info.value.status_code == 400
    assert info.value.type == "invalid_request_error"  # read from OpenAI's error shape


async def test_httpx_events_arrive_incrementally() -> None:
    async with deadline(30) as tg:
        mock = await start_mock(tg, tokens=10, delay=0.05)
        base = await start_proxy(tg, mock)
        arrivals: list[float] = []
        async with (
            httpx.AsyncClient() as client,
            client.stream(
                "POST",
                base + "/v1/chat/completions",
                json={"stream": True, "messages": MESSAGES},
            ) as response,
        ):
            arrivals.extend(
                [time.monotonic() async for _ in ssekit.aiter_events(response.aiter_bytes())]
            )
    assert len(arrivals) == 13
    # First event well before the last: nothing buffered into one late blob.
    assert arrivals[-1] - arrivals[0] > 0.3


def test_curl_streams_through_the_proxy_live() -> None:
    async def main() -> None:
        async with deadline(30) as tg:
            mock = await start_mock(tg, tokens=10, delay=0.05)
            base = await start_proxy(tg, mock)

            def run_curl() -> tuple[list[float], bytes]:
                assert shutil.which("curl"), "curl is needed (.ci/run installs it)"
                proc = subprocess.Popen(
                    [
                        "curl", "-sN", base + "/v1/chat/completions",
                        "-H", "Content-Type: application/json",
                        "-d", '{"stream":true,"messages":[{"role":"user","content":"hi"}]}',
                    ],
                    stdout=subprocess.PIPE,
                )  # fmt: skip
                assert proc.stdout is not None
                times, out = [], b""
                with proc, proc.stdout:
                    for line in proc.stdout:
                        out += line
                        if line.startswith(b"data: "):
                            times.append(time.monotonic())
                    assert proc.wait(timeout=20) == 0
                return times, out

            times, out = await anyio.to_thread.run_sync(run_curl)
        assert out.endswith(b"data: [DONE]\n\n")
        assert "你好" in ssekit.join_deltas(ssekit.iter_chunks(ssekit.iter_events([out])))
        assert times[-1] - times[0] > 0.3

    anyio.run(main)
