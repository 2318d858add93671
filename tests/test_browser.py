"""A real browser (Debian's headless Chromium, driven by Playwright) through the proxy.

The mock's /demo page opens an EventSource and a fetch() stream reader; both go through
the proxy. .ci/run installs chromium; Playwright is pointed at /usr/bin/chromium and never
downloads a browser of its own.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import anyio
import pytest
from _servers import deadline, start_mock, start_proxy

from ssekit.proxy._mock import mock_text

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.mark.usefixtures("http_engine")  # the proxy and the mock on both HTTP/1.1 engines
def test_chromium_streams_live_through_the_proxy_and_resumes_after_a_cut() -> None:

    assert Path(CHROMIUM).exists(), "Debian's chromium is needed (.ci/run installs it)"

    async def main() -> None:
        async with deadline(90) as tg:
            mock = await start_mock(tg, tokens=20, delay=0.05)
            base = await start_proxy(tg, mock)
            await anyio.to_thread.run_sync(drive, base)

    anyio.run(main)


def drive(base: str) -> None:
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="ssekit-chromium-")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, args=FLAGS, headless=True
            )
            try:
                page = browser.new_page()
                page.goto(f"{base}/demo?count=6&cut_after=3")
                page.wait_for_function("window.fetchDone === true", timeout=30_000)
                page.wait_for_function("window.esEvents.length >= 6", timeout=30_000)
                es_events = page.evaluate("window.esEvents")
                chunks = page.evaluate("window.chunks")
                answer = page.text_content("#answer")
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "browser-demo.png"), full_page=True)
            finally:
                browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)

    # The fetch() reader: Chinese intact, [DONE] ended it, tokens arrived over time.
    assert answer == mock_text(20)
    assert "你好" in answer
    texts = [c["text"] for c in chunks]
    assert "".join(texts) == mock_text(20)
    assert chunks[-1]["t"] - chunks[0]["t"] > 500  # ms: first token long before the last
    # EventSource: cut after 3 events, reconnected with Last-Event-ID: 3, resumed at 4.
    ids = [e["id"] for e in es_events if e["data"] != "hello"]
    assert ids == ["1", "2", "3", "4", "5", "6"]
    assert es_events[0]["data"] == "event 1 你好"


PAGE = """<!doctype html><meta charset="utf-8"><title>ssekit</title><script>
window.events = [];
const source = new EventSource("/stream");
source.addEventListener("token", (e) => window.events.push({data: e.data, id: e.lastEventId}));
source.addEventListener("end", () => { source.close(); window.done = true; });
</script>"""


def test_chromium_eventsource_reads_a_starlette_event_source_response() -> None:
    import time

    from _uvicorn import running
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    import ssekit
    from ssekit.starlette import EventSourceResponse

    closed: list[float] = []

    async def tokens() -> Any:
        try:
            for n, text in enumerate(["你好", "，", "世界", "\n", "🙂"]):
                yield ssekit.Event(data=text, event="token", id=str(n + 1))
                await anyio.sleep(0.05)
            yield {"event": "end", "data": ""}
            await anyio.sleep(30)  # the browser closes first
        finally:
            closed.append(time.monotonic())

    async def stream(request: Any) -> EventSourceResponse:
        return EventSourceResponse(tokens(), ping=0.02)

    async def page(request: Any) -> HTMLResponse:
        return HTMLResponse(PAGE)

    app = Starlette(routes=[Route("/", page), Route("/stream", stream)])
    with running(app) as server:
        events = read_page(server.url)
        deadline = time.monotonic() + 5
        while not closed and time.monotonic() < deadline:
            time.sleep(0.01)
    assert [e["data"] for e in events] == ["你好", "，", "世界", "\n", "🙂"]
    assert [e["id"] for e in events] == ["1", "2", "3", "4", "5"]
    assert closed, "the producer outlived the browser's EventSource.close()"
    assert server.errors == []


def read_page(base: str) -> list[dict[str, str]]:
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="ssekit-chromium-")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, args=FLAGS, headless=True
            )
            try:
                page = browser.new_page()
                page.goto(base + "/")
                page.wait_for_function("window.done === true", timeout=30_000)
                events: list[dict[str, str]] = page.evaluate("window.events")
            finally:
                browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return events


pytestmark = pytest.mark.timeout(180)
