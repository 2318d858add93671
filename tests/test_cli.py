"""The ssekit command line, as an operator runs it (subprocesses)."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from ssekit import Event, iter_chunks, iter_events, join_deltas
from ssekit.proxy._mock import mock_text

CHAT = {"stream": True, "messages": [{"role": "user", "content": "hi"}]}


def ssekit(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ssekit", *args],
        capture_output=True,
        text=True,
        timeout=30,
        **kwargs,  # type: ignore[call-overload]
    )


def test_help_explains_every_proxy_option_with_its_default() -> None:
    result = ssekit("proxy", "--help")
    assert result.returncode == 0
    for option in (
        "--upstream", "--listen", "--connect-timeout", "--first-byte-timeout", "--idle-timeout",
        "--header-timeout", "--retries", "--heartbeat", "--error-event", "--api-key-env",
        "--client-token-env", "--upstream-ca", "--upstream-proxy", "--admin-prefix",
        "--drain-timeout", "--log-format", "--max-header-size", "--pool-size",
        "--resume-store", "--resume-ttl", "--resume-grace", "--resume-max-bytes",
        "--resume-memory-limit", "--http",
    ):  # fmt: skip
        assert option in result.stdout
    assert "127.0.0.1:8080" in result.stdout
    assert "curl -N" in result.stdout
    assert "(default: 300.0)" in result.stdout


def test_top_level_help_lists_the_commands() -> None:
    result = ssekit("--help")
    assert result.returncode == 0
    assert "proxy" in result.stdout
    assert "mock-upstream" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["proxy", "--upstream", "ftp://x"],
        ["proxy", "--listen", "nope"],
        ["proxy", "--idle-timeout", "-1"],
        ["proxy", "--api-key-env", "SSEKIT_TEST_UNSET_VAR"],
        ["proxy", "--api-key-env", "x=PATH", "--api-key-env", "x=HOME"],  # one label, two keys
        ["proxy", "--api-key-env", "key2=PATH", "--api-key-env", "HOME"],  # HOME's is key2 too
        ["proxy", "--client-token-env", "t=PATH", "--client-token-env", "t=HOME"],
        ["proxy", "--upstream-proxy", "https://p:1"],
        ["proxy", "--admin-prefix", "metrics/"],
        ["proxy", "--resume-store", "disk"],
        ["proxy", "--resume-ttl", "0"],
        ["proxy", "--resume-store", "memory", "--workers", "2"],
        ["proxy", "--resume-max-bytes", "100", "--resume-memory-limit", "10"],
        ["proxy", "--http", "httptools"],
        ["mock-upstream", "--http", "h2"],
    ],
)
def test_bad_options_exit_2_with_a_message(args: list[str]) -> None:
    result = ssekit(*args)
    assert result.returncode == 2  # a configuration error, before listening
    assert result.stdout == ""  # no listening line
    assert result.stderr.strip()  # the message (free text, for a person)


def start(*args: str) -> tuple[subprocess.Popen[str], str, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ssekit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    banner: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        banner.append(line)
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        if match and ("proxy" in line or args[0] == "mock-upstream"):
            return proc, match.group(1), banner
    proc.kill()
    raise AssertionError(f"no listening line in {banner}")


def banner_facts(banner: list[str]) -> dict[str, str]:
    """The ``key: value`` facts in the parentheses ending the listening line."""
    line = next(line for line in banner if "listening on" in line)
    match = re.search(r"\(([^()]*)\)\s*$", line)
    assert match, line
    return dict(part.split(": ", 1) for part in match.group(1).split(", ") if ": " in part)


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    return proc.returncode, err


def test_proxy_without_upstream_serves_the_mock_prints_a_curl_line_and_drains() -> None:
    proc, base, banner = start("proxy", "--listen", "127.0.0.1:0", "--log-format", "json")
    try:
        banner.append(proc.stdout.readline())  # type: ignore[union-attr]
        banner.append(proc.stdout.readline())  # type: ignore[union-attr]
        banner.append(proc.stdout.readline())  # type: ignore[union-attr]
        text = "".join(banner)
        assert "built-in mock upstream" in text
        assert f"curl -N {base}/v1/chat/completions" in text
        with httpx.Client(timeout=20) as client:
            response = client.post(base + "/v1/chat/completions", json=CHAT)
        assert response.status_code == 200
        assert response.text.endswith("data: [DONE]\n\n")
    finally:
        code, err = stop(proc)
    assert code == 0
    log = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert log[0]["path"] == "/v1/chat/completions"
    assert log[0]["status"] == 200
    assert log[0]["outcome"] == "complete"
    assert log[0]["done"] is True
    assert log[0]["events"] == 43  # role + 40 tokens + stop + [DONE]


def test_sigterm_lets_a_stream_in_flight_finish() -> None:
    mock, mock_base, _ = start("mock-upstream", "--listen", "127.0.0.1:0", "--delay", "0.05")
    proxy, base, _ = start(
        "proxy", "--upstream", mock_base, "--listen", "127.0.0.1:0", "--log-format", "json"
    )
    try:
        with (
            httpx.Client(timeout=20) as client,
            client.stream("POST", base + "/v1/chat/completions", json=CHAT) as response,
        ):
            body = b""
            for data in response.iter_bytes():
                if not body:
                    proxy.send_signal(signal.SIGTERM)
                body += data
        assert body.endswith(b"data: [DONE]\n\n")
        _, err = proxy.communicate(timeout=20)  # exits by itself once drained
        assert proxy.returncode == 0
        lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        log = [x for x in lines if "outcome" in x]  # the access log, not notices
        assert [(x["path"], x["outcome"], x["done"]) for x in log] == [
            ("/v1/chat/completions", "complete", True)
        ]
    finally:
        proxy.kill()
        stop(mock)


@pytest.mark.parametrize(("choice", "expected"), [("asyncio", "asyncio"), ("uvloop", "uvloop")])
def test_loop_option_picks_the_event_loop_shows_it_and_serves(choice: str, expected: str) -> None:
    proc, base, banner = start("proxy", "--listen", "127.0.0.1:0", "--loop", choice)
    try:
        assert banner_facts(banner) == {"event loop": expected, "http": "ssekit"}
        with httpx.Client(timeout=20) as client:
            response = client.post(base + "/v1/chat/completions", json=CHAT)
        assert response.text.endswith("data: [DONE]\n\n")
    finally:
        code, _ = stop(proc)
    assert code == 0


def test_loop_auto_uses_uvloop_when_it_is_installed() -> None:
    proc, _, banner = start("proxy", "--listen", "127.0.0.1:0")
    try:
        assert banner_facts(banner)["event loop"] == "uvloop"  # the test extra installs it
    finally:
        stop(proc)


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one process", "workers"])
def test_an_idle_proxy_exits_promptly_on_sigterm(workers: list[str]) -> None:
    proc, base, _ = start("proxy", "--listen", "127.0.0.1:0", *workers)
    try:
        with httpx.Client(timeout=20) as client:  # its connection stays open, idle
            assert client.post(base + "/v1/chat/completions", json=CHAT).status_code == 200
            time.sleep(0.3)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=20)
            took = time.monotonic() - signalled
    finally:
        stop(proc)
    assert code == 0
    assert took < 1.0  # issue 19 measured 1.1-1.5 s


def test_the_drain_is_announced_as_a_json_notice_with_log_format_json() -> None:
    proc, _, _ = start("proxy", "--listen", "127.0.0.1:0", "--log-format", "json")
    code, err = stop(proc)
    assert code == 0
    notices = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [(n["notice"], n["drain_timeout_s"]) for n in notices] == [("draining", 10.0)]


def test_http_h11_runs_the_proxy_and_its_mock_on_h11_for_httpx_and_the_openai_sdk() -> None:
    """``--http h11``: both sides of the proxy and the built-in mock on h11; the banner,
    the metrics and real clients (httpx, the openai SDK) all agree."""
    proc, base, banner = start(
        "proxy", "--listen", "127.0.0.1:0", "--http", "h11", "--log-format", "json"
    )
    try:
        assert banner_facts(banner)["http"] == "h11"
        mock = next(
            match.group(1)
            for line in banner
            if (match := re.search(r"built-in mock upstream on (http://127\.0\.0\.1:\d+)", line))
        )
        with (
            httpx.Client(timeout=20) as client,
            client.stream("POST", base + "/v1/chat/completions", json=CHAT) as response,
        ):
            assert response.headers["transfer-encoding"] == "chunked"
            events = list(iter_events(response.iter_bytes()))
        assert events[-1] == Event(data="[DONE]")
        assert join_deltas(iter_chunks(events)) == mock_text(40)

        sdk = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
        with sdk:
            stream = sdk.chat.completions.create(
                model="ssekit-mock",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
            )
            parts = [c.choices[0].delta.content or "" for c in stream if c.choices]
        assert "".join(parts) == mock_text(40)
        assert len(parts) >= 40  # token by token, not one blob

        with httpx.Client(timeout=20) as client:
            metrics = client.get(base + "/_ssekit/metrics").text
        series = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line[:1] != "#")
        engines = {name: value for name, value in series.items() if "http_engine" in name}
        assert engines == {'ssekit_http_engine{engine="h11"}': "1"}
        # The mock is on h11 too: it reads a chunk whose size line carries a 5 KB
        # extension, as h11 does, and answers the body (not JSON: a 400 of its own);
        # ssekit's engine refuses such a size line and closes unanswered.
        host, port = mock.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            raw.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                b"\r\n\r\n2;" + b"e" * 5000 + b"\r\nhi\r\n0\r\n\r\n"
            )
            assert raw.recv(1024).startswith(b"HTTP/1.1 400 ")
    finally:
        code, err = stop(proc)
    assert code == 0
    log = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    streams = [entry for entry in log if entry.get("path") == "/v1/chat/completions"]
    # The openai SDK closes its response at [DONE], which can be before the upstream's
    # last chunk reaches the proxy: then that stream ends client_disconnect, [DONE] seen.
    assert [(e["status"], e["done"]) for e in streams] == [(200, True)] * 2
    assert streams[0]["outcome"] == "complete"
    assert streams[1]["outcome"] in ("complete", "client_disconnect")


def test_mock_upstream_http_h11_serves_on_h11_and_says_so() -> None:
    proc, base, banner = start("mock-upstream", "--listen", "127.0.0.1:0", "--http", "h11")
    try:
        assert banner_facts(banner) == {"http": "h11"}
        with httpx.Client(timeout=20) as client:
            response = client.post(base + "/v1/chat/completions", json={**CHAT, "max_tokens": 3})
        assert join_deltas(iter_chunks(iter_events([response.content]))) == mock_text(3)
    finally:
        code, _ = stop(proc)
    assert code == 0
