"""The status page in a real browser (Debian's headless Chromium, driven by Playwright).

A slow stream through the proxy appears on the page, counts its events, stalls, and moves
to the finished list as upstream_cut when the upstream cuts it; without the admin token
the page is refused. Assertions read the data- attributes the page puts on its elements.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import anyio
import httpx
from _servers import LAST_CHUNK, SSE_HEAD, Seen, chunk, deadline, start_proxy, start_upstream
from test_browser import CHROMIUM, FLAGS

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
TOKEN = "adm1n-token"


def test_chromium_watches_a_stream_appear_count_stall_and_end_cut() -> None:
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed (.ci/run installs it)"
    cut = threading.Event()

    async def upstream_script(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        path = seen.requests[-1].split(b" ")[1]
        await stream.send(SSE_HEAD)
        if path.startswith(b"/v1/quick"):
            await stream.send(chunk(b"data: a\n\ndata: b\n\ndata: [DONE]\n\n") + LAST_CHUNK)
            return
        for n in range(5):  # the slow stream: five events, then nothing until cut
            await anyio.sleep(0.3)
            await stream.send(chunk(b'data: {"n": %d}\n\n' % n))
        while not cut.is_set():
            await anyio.sleep(0.05)
        # Returning closes the connection with no last chunk: the upstream cut the stream.

    async def main() -> dict[str, Any]:
        async with deadline(90) as tg:
            upstream, _ = await start_upstream(tg, upstream_script)
            base = await start_proxy(tg, upstream, admin_tokens=(TOKEN,))
            return await anyio.to_thread.run_sync(drive, base, cut)

    seen = anyio.run(main)
    assert seen["appeared"]["data-method"] == "POST"
    assert seen["appeared"]["data-status"] == "200"
    assert seen["counted"] == "5"
    assert seen["stalled"] == "true"
    assert seen["finished"]["data-outcome"] == "upstream_cut"
    assert seen["finished"]["data-events"] == "5"
    assert seen["finished"]["data-id"] == seen["appeared"]["data-id"]
    assert seen["open_after"] == 0
    assert seen["counts"] == {"complete": "2", "upstream_cut": "1"}
    assert seen["workers"] == "1"
    # Offline: the page asked for itself and its feed, nothing else.
    assert seen["requested"] <= {
        f"{seen['base']}/_ssekit/?stall=1",
        f"{seen['base']}/_ssekit/events",
    }
    assert f"{seen['base']}/_ssekit/events" in seen["requested"]


def drive(base: str, cut: threading.Event) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    def client_stream(path: str) -> None:
        with httpx.Client(timeout=30) as client:
            try:
                with client.stream("POST", base + path, json={"stream": True}) as r:
                    for _ in r.iter_bytes():
                        pass
            except httpx.HTTPError:
                pass  # the cut stream ends in an error, as it should

    seen: dict[str, Any] = {"base": base}
    profile = tempfile.mkdtemp(prefix="ssekit-chromium-")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                args=[*FLAGS, "--window-size=1400,900"],
                headless=True,
                http_credentials={"username": "ops", "password": TOKEN},
                offline=False,
            )
            try:
                page = browser.new_page()
                requested: list[str] = []
                page.on("request", lambda request: requested.append(request.url))
                page.set_viewport_size({"width": 1400, "height": 820})
                response = page.goto(f"{base}/_ssekit/?stall=1")
                assert response is not None
                assert response.status == 200
                page.wait_for_selector('body[data-feed="open"]', timeout=15_000)
                for _ in range(2):
                    client_stream("/v1/quick")
                slow = threading.Thread(target=client_stream, args=("/v1/chat/completions",))
                slow.start()
                row = '#open tr[data-path="/v1/chat/completions"]'
                page.wait_for_selector(row, timeout=15_000)
                seen["appeared"] = attributes(page, row)
                page.wait_for_selector(f'{row}[data-events="5"]', timeout=15_000)
                seen["counted"] = page.get_attribute(row, "data-events")
                page.wait_for_selector(f'{row}[data-stalled="true"]', timeout=15_000)
                seen["stalled"] = page.get_attribute(row, "data-stalled")
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)
                cut.set()
                done = '#finished tr[data-path="/v1/chat/completions"]'
                page.wait_for_selector(done, timeout=15_000)
                seen["finished"] = attributes(page, done)
                page.wait_for_selector(
                    '#outcomes [data-outcome="upstream_cut"][data-count="1"]', timeout=15_000
                )
                seen["open_after"] = page.locator(row).count()
                seen["counts"] = {
                    name: page.get_attribute(f'#outcomes [data-outcome="{name}"]', "data-count")
                    for name in ("complete", "upstream_cut")
                }
                seen["workers"] = page.get_attribute('[data-metric="workers_alive"]', "data-value")
                seen["requested"] = set(requested)
                slow.join(timeout=10)
            finally:
                browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return seen


def attributes(page: Any, selector: str) -> dict[str, str]:
    found: dict[str, str] = page.eval_on_selector(
        selector, "e => Object.fromEntries([...e.attributes].map(a => [a.name, a.value]))"
    )
    return found


def test_chromium_is_refused_the_page_without_the_admin_token() -> None:
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed (.ci/run installs it)"

    async def quick(stream: anyio.abc.SocketStream, seen: Seen) -> None:
        await stream.send(SSE_HEAD + LAST_CHUNK)

    async def main() -> dict[str, Any]:
        async with deadline(60) as tg:
            upstream, _ = await start_upstream(tg, quick)
            base = await start_proxy(tg, upstream, admin_tokens=(TOKEN,))
            return await anyio.to_thread.run_sync(refused, base)

    seen = anyio.run(main)
    assert seen["none"] == 401
    assert seen["wrong"] == 401
    assert seen["tables"] == 0  # nothing of the page was served
    assert seen["right"] == 200


def refused(base: str) -> dict[str, Any]:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    seen: dict[str, Any] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            cases: list[tuple[str, dict[str, Any]]] = [
                ("none", {}),
                ("wrong", {"extra_http_headers": {"authorization": "Bearer not-it"}}),
                ("right", {"http_credentials": {"username": "ops", "password": TOKEN}}),
            ]
            for name, options in cases:
                context = browser.new_context(**options)
                page = context.new_page()
                statuses: list[int] = []
                page.on("response", lambda r, got=statuses: got.append(r.status))
                try:
                    page.goto(f"{base}/_ssekit/")
                except PlaywrightError:
                    pass  # no credentials to answer the Basic challenge: the load fails
                seen[name] = statuses[-1]
                if name == "none":
                    seen["tables"] = page.locator("#open").count()
                context.close()
        finally:
            browser.close()
    return seen
