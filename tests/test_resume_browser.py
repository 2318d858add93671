"""A real browser resuming a stream: Chromium's EventSource on the resume URL, cut mid-stream.

A TCP relay between Chromium and the proxy cuts the first connection once event 8 went
through; the EventSource reconnects by itself with ``Last-Event-ID`` and the page ends
with every event exactly once.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

import anyio
import anyio.abc
import httpx
import pytest
from _resume_helpers import start_chat
from _servers import deadline, serve_closing, start_mock, start_proxy
from test_browser import CHROMIUM, FLAGS

import ssekit
from ssekit.proxy._mock import mock_text

PAGE = """<!doctype html><meta charset="utf-8"><title>resume</title><script>
window.events = []; window.errors = 0; window.done = false;
const source = new EventSource("/_ssekit/streams/chat-1");
source.onmessage = (e) => {
  window.events.push({id: e.lastEventId, data: e.data});
  if (e.data === "[DONE]") { source.close(); window.done = true; }
};
source.onerror = () => { window.errors += 1; };
</script>"""


async def start_cutting_relay(
    tg: anyio.abc.TaskGroup, target: str, cut_after: bytes, heads: list[bytes]
) -> str:
    """A relay to ``target`` that cuts its first connection after the event holding
    ``cut_after``."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    host, target_port = target.removeprefix("http://").split(":")
    cut: list[int] = []

    async def handle(browser: anyio.abc.SocketStream) -> None:
        number = len(heads)
        heads.append(b"")
        async with browser, await anyio.connect_tcp(host, int(target_port)) as proxy:
            async with anyio.create_task_group() as pipes:

                async def up() -> None:
                    with contextlib.suppress(Exception):
                        async for data in browser:
                            heads[number] += data
                            await proxy.send(data)

                async def down() -> None:
                    seen = b""
                    with contextlib.suppress(Exception):
                        async for data in proxy:
                            seen += data
                            found = seen.find(cut_after)
                            end = seen.find(b"\n\n", found) if found >= 0 else -1
                            if end >= 0 and not cut:
                                # The first connection to get this far ends right after
                                # that event, even if more came in the same read (a
                                # browser slow to start finds the stream long finished).
                                await browser.send(data[: len(data) - (len(seen) - end - 2)])
                                cut[:] = [number]
                                break
                            await browser.send(data)
                    pipes.cancel_scope.cancel()

                pipes.start_soon(up)
                pipes.start_soon(down)

    tg.start_soon(serve_closing, listener, handle)
    return f"http://127.0.0.1:{port}"


def test_chromium_eventsource_resumes_a_cut_stream_with_every_event_once() -> None:
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed (.ci/run installs it)"
    heads: list[bytes] = []
    got: dict[str, object] = {}

    async def main() -> None:
        async with deadline(90) as tg:
            mock = await start_mock(tg, tokens=30, delay=0.1)
            base = await start_proxy(tg, mock, resume_store="memory")
            async with httpx.AsyncClient(timeout=10) as client:
                stream_id, _ = await start_chat(
                    client, base, 2, headers={"ssekit-resume-key": "chat-1"}
                )
            assert stream_id == "chat-1"
            relay = await start_cutting_relay(tg, base, b"id: 8\n", heads)
            got.update(await anyio.to_thread.run_sync(drive, relay))

    anyio.run(main)
    events = got["events"]
    assert isinstance(events, list)
    ids = [int(e["id"]) for e in events]
    assert ids == list(range(1, len(ids) + 1))  # every event once, in order
    assert events[-1]["data"] == "[DONE]"
    chunks = ssekit.iter_chunks(iter([ssekit.Event(data=e["data"]) for e in events]))
    assert ssekit.join_deltas(chunks) == mock_text(30)
    streams = [h for h in heads if b"/_ssekit/streams/chat-1" in h]
    assert len(streams) >= 2  # cut, then reconnected
    # The reconnection after the cut says where it was (a connection that failed before
    # any event, as can happen on a loaded machine, is retried without one first).
    assert any(b"last-event-id: 8\r\n" in head.lower() for head in streams[1:]), streams
    assert got["errors"] >= 1


def drive(relay: str) -> dict[str, object]:
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="ssekit-chromium-")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, args=FLAGS, headless=True
            )
            try:
                page = browser.new_page()
                page.route(
                    f"{relay}/page",
                    lambda route: route.fulfill(body=PAGE, content_type="text/html"),
                )
                page.goto(f"{relay}/page")
                page.wait_for_function("window.done === true", timeout=60_000)
                return {"events": page.evaluate("window.events"),
                        "errors": page.evaluate("window.errors")}  # fmt: skip
            finally:
                browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


# On both HTTP/1.1 engines: the proxy and mock _servers starts run on it.
pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("http_engine")]
