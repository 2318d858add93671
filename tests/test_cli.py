"""The ssekit command line, as an operator runs it (subprocesses)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

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
        "--resume-memory-limit",
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
        ["proxy", "--upstream-proxy", "https://p:1"],
        ["proxy", "--admin-prefix", "metrics/"],
        ["proxy", "--resume-store", "disk"],
        ["proxy", "--resume-ttl", "0"],
        ["proxy", "--resume-store", "memory", "--workers", "2"],
        ["proxy", "--resume-max-bytes", "100", "--resume-memory-limit", "10"],
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
        assert f"(event loop: {expected})" in "".join(banner)
        with httpx.Client(timeout=20) as client:
            response = client.post(base + "/v1/chat/completions", json=CHAT)
        assert response.text.endswith("data: [DONE]\n\n")
    finally:
        code, _ = stop(proc)
    assert code == 0


def test_loop_auto_uses_uvloop_when_it_is_installed() -> None:
    proc, _, banner = start("proxy", "--listen", "127.0.0.1:0")
    try:
        assert "(event loop: uvloop)" in "".join(banner)  # the test extra installs it
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
