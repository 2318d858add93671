"""``ssekit proxy --usage-log`` as an operator runs it (issue 21): key labels from
``--api-key-env NAME=VAR``, tokens summed over ``--workers``, SIGHUP reopening the log
after rotation, and a log that cannot be written never stopping a stream."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from _procs import Stderr, finish, listening, spawn

from ssekit.proxy._mock_apis import mock_usage

MESSAGES = [{"role": "user", "content": "count me"}]  # prompt 12
CHAT = {"model": "cli-model", "stream": True, "messages": MESSAGES}


@contextmanager
def proxy(
    *extra: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    mock = spawn("mock-upstream", "--listen", "127.0.0.1:0", "--tokens", "5", "--delay", "0")
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        upstream = listening(mock, "mock")
        proc = spawn("proxy", "--upstream", upstream, "--listen", "127.0.0.1:0", *extra)
        Stderr(proc)
        try:
            yield proc, listening(proc, "proxy")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            finish(proc)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        mock.kill()
        finish(mock)


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(check: object, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def stream(base: str, client: httpx.Client) -> str:
    with client.stream("POST", base + "/v1/chat/completions", json=CHAT) as response:
        assert response.status_code == 200
        return response.read().decode()


def test_workers_sum_tokens_per_key_label_and_sighup_reopens_the_usage_log(tmp_path: Path) -> None:
    log = tmp_path / "usage.jsonl"
    env = {"USAGE_KEY_A": "sk-aaa", "USAGE_KEY_B": "sk-bbb,sk-ccc"}
    with proxy(
        "--workers", "2", "--usage-log", str(log), "--include-usage",
        "--api-key-env", "alpha=USAGE_KEY_A", "--api-key-env", "USAGE_KEY_B",
        env=env,
    ) as (proc, base):  # fmt: skip
        with httpx.Client(timeout=20) as client:
            for _ in range(6):
                stream(base, client)
            assert wait_for(lambda: len(lines(log)) == 6)
            log.rename(tmp_path / "usage.jsonl.1")
            proc.send_signal(signal.SIGHUP)
            assert wait_for(log.exists)  # every worker reopened it (created empty)
            time.sleep(0.2)
            for _ in range(4):
                stream(base, client)
            assert wait_for(lambda: len(lines(log)) == 4)
            time.sleep(1.5)  # each worker leaves its counters every second
            text = client.get(base + "/_ssekit/metrics").text
        assert proc.poll() is None  # SIGHUP did not stop it
    first = lines(tmp_path / "usage.jsonl.1")
    assert len(first) == 6
    expected = mock_usage({"messages": MESSAGES}, 5)
    assert expected.prompt == 12
    every = first + lines(log)
    assert all(line["usage"] == "reported" for line in every)
    assert all(line["completion_tokens"] == 5 for line in every)
    assert {line["key"] for line in every} <= {"alpha", "key2", "key3"}
    found = {
        (m.group(1), m.group(2)): float(m.group(3))
        for m in re.finditer(
            r'ssekit_tokens_total\{kind="(\w+)",model="cli-model",key="([\w-]+)"\} (\S+)', text
        )
    }
    assert sum(v for (kind, _), v in found.items() if kind == "completion") == 10 * 5
    assert sum(v for (kind, _), v in found.items() if kind == "prompt") == 10 * 12
    per_key = {key: 0 for key in ("alpha", "key2", "key3")}
    for line in every:
        per_key[str(line["key"])] += 1
    for key, count in per_key.items():
        assert found.get(("completion", key), 0) == count * 5
    assert "sk-" not in text  # labels, never key material


def test_an_unwritable_usage_log_is_counted_and_streams_go_on(tmp_path: Path) -> None:
    target = tmp_path / "no-such-dir" / "usage.jsonl"
    with proxy("--usage-log", str(target)) as (_, base):
        with httpx.Client(timeout=20) as client:
            body = stream(base, client)
            time.sleep(0.2)
            text = client.get(base + "/_ssekit/metrics").text
    assert body.rstrip().endswith("data: [DONE]")
    errors = re.search(r"^ssekit_usage_log_errors_total (\d+)$", text, re.M)
    assert errors is not None
    assert int(errors.group(1)) >= 2
