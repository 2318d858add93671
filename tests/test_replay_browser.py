"""A real browser (headless Chromium, Playwright) reads a replay as it read the live stream.

The mock's /demo page (an EventSource cut after 3 events that resumes with
Last-Event-ID, and a fetch() reader of a streamed chat) is recorded through
``proxy --record``, then served by ``mock-upstream --replay`` from the cassettes alone.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import anyio
from _servers import deadline, start_mock, start_proxy
from test_browser import CHROMIUM, FLAGS

from ssekit.cassette import load
from ssekit.proxy._mock import mock_text
from ssekit.proxy._replay import ReplayConfig, serve_replay


def demo(base: str) -> tuple[list[dict[str, Any]], str]:
    """The demo page's EventSource events and fetch() answer."""
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
                return page.evaluate("window.esEvents"), page.text_content("#answer") or ""
            finally:
                browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_chromium_reads_a_replayed_demo_as_the_live_one(tmp_path: Path) -> None:
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed (.ci/run installs it)"
    results: dict[str, tuple[list[dict[str, Any]], str]] = {}

    async def main() -> None:
        async with deadline(120) as tg:
            # The cut comes a delay after event 3: Chromium, given the last event and the
            # cut within a few ms, sometimes fails the EventSource before it dispatches the
            # events still in its pipe, and reconnects from an earlier id (seen 1 run in 8).
            mock = await start_mock(tg, tokens=12, delay=0.15)
            proxy = await start_proxy(tg, mock, record=str(tmp_path))
            results["live"] = await anyio.to_thread.run_sync(demo, proxy)
            await anyio.sleep(0.5)  # the recorder's thread finishes the files
            config = ReplayConfig(source=str(tmp_path), listen_port=0)
            host, port = await tg.start(serve_replay, config)
            results["replay"] = await anyio.to_thread.run_sync(demo, f"http://{host}:{port}")

    anyio.run(main)
    outcomes = sorted(
        (load(p).request.path, load(p).read_end().outcome) for p in tmp_path.glob("*.jsonl")
    )
    assert ("/v1/events", "upstream_cut") in outcomes
    assert ("/v1/events", "complete") in outcomes
    for name in ("live", "replay"):
        events, answer = results[name]
        assert answer == mock_text(12)
        ids = [e["id"] for e in events if e["data"] != "hello"]
        assert ids == ["1", "2", "3", "4", "5", "6"], name
    strip = [[(e["id"], e["data"]) for e in results[n][0]] for n in ("live", "replay")]
    assert strip[0] == strip[1]
