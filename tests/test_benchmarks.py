"""The benchmarks run from a fresh clone as documented (issue 19, section 5).

Nothing here measures anything: the commands' help, what they say when a package is
missing, how a quick run labels its targets, the proxy bench's own upstream, and what
the READMEs tell a new user. A missing package is shown with ``python -S`` (no
site-packages: ssekit's peers, and ssekit's own installation, are all absent).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ssekit
from benchmarks import bench_decoder, bench_proxy, needs, payloads, run, targets
from benchmarks.peers import SSEKIT

ROOT = Path(__file__).resolve().parent.parent
INSTALL = "pip install -e '.[bench]'"


def bench(*args: str, site: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    flags = [] if site else ["-S"]
    return subprocess.run(
        [sys.executable, *flags, "-m", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_run_help_is_its_own_usage_and_measures_nothing() -> None:
    result = bench("benchmarks.run", "--help")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("usage: python -m benchmarks.run ")  # no machine header first
    assert "--quick" in result.stdout
    assert run.__doc__ is not None
    assert run.__doc__.splitlines()[0] in lines  # the description is run's, not the decoder's


@pytest.mark.parametrize(
    "command",
    [
        ["benchmarks.run", "--quick"],
        ["benchmarks.bench_decoder", "--quick"],
        ["benchmarks.bench_encoder", "--quick"],
        ["benchmarks.bench_integrations", "--quick"],
        ["benchmarks.bench_proxy", "--quick"],
        ["benchmarks.bench_requests", "--rounds", "1"],
        ["benchmarks.bench_tap", "--quick"],
    ],
    ids=lambda command: command[0],
)
def test_a_command_missing_packages_exits_2_before_measuring(command: list[str]) -> None:
    result = bench(*command, site=False)
    assert result.returncode == 2  # as a configuration error
    assert result.stdout == ""  # no header, no table
    assert result.stderr.count("\n") == 1  # one line saying what is missing: no traceback


def test_missing_lists_only_what_is_not_installed_once_each() -> None:
    absent = "ssekit-no-such-distribution"
    assert needs.missing(["ssekit", absent, "httpx", absent]) == [absent]


def workload_results(ratio: float) -> list[tuple[payloads.Workload, dict[str, dict[str, object]]]]:
    work = payloads.Workload("openai-en, event per chunk", [b"data: x\n\n"], [ssekit.Event()])
    # Both implementations, timed alike: each is judged against its own target.
    results: dict[str, dict[str, object]] = {
        **{name: {"wrong": None, "seconds": 1.0} for name in SSEKIT},
        "httpx-sse": {"wrong": None, "seconds": ratio},
    }
    return [(work, results)]


def test_a_quick_run_labels_its_targets_indicative_never_pass_or_fail() -> None:
    for ratio in (0.5, 5.0):
        quick = bench_decoder.targets(workload_results(ratio), quick=True)
        full = bench_decoder.targets(workload_results(ratio), quick=False)
        assert targets.QUICK_NOTE in quick
        assert not any("PASS" in line or "FAIL" in line for line in quick)
        assert any("indicative" in line for line in quick)
        assert targets.QUICK_NOTE not in full
        assert any(("PASS" if ratio > 2 else "FAIL") in line for line in full)


def proxy_results(added: float) -> dict[str, dict[str, float]]:
    figures = {"cpu_event_us": 30.0, "mbps": 500.0, "cpu_mb_ms": 2.0, "ttfb50": 20.0,
               "whole500": 500, "disconnect": 0.5, "growth": 100}  # fmt: skip
    direct = {"p50": 0.1, "p99": 0.5, "c50": 1.0, "c99": 5.0, **figures}
    ssekit_row = {"p50": added, "p99": added, "c50": added, "c99": added, **figures}
    return {"direct": direct, "ssekit": ssekit_row}


def test_the_proxy_report_never_shows_a_negative_added_latency() -> None:
    lines = bench_proxy.report(proxy_results(-0.023), 1, "ssekit", quick=False)
    [row] = [line for line in lines if line.startswith("| ssekit |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1:5] == ["0.000*"] * 4
    assert bench_proxy.NOISE_NOTE in lines
    assert bench_proxy.NOISE_NOTE not in bench_proxy.report(
        proxy_results(0.05), 1, "ssekit", quick=False
    )


def test_the_proxy_report_labels_a_quick_run_indicative() -> None:
    lines = bench_proxy.report(proxy_results(0.05), 1, "ssekit", quick=True)
    assert targets.QUICK_NOTE in lines
    verdicts = [line for line in lines if line.startswith("- ")]
    assert verdicts
    assert all(line.endswith(("indicative: met", "indicative: not met")) for line in verdicts)


def test_the_proxy_benchs_upstream_takes_a_readiness_probe_quietly(tmp_path: Path) -> None:
    script = tmp_path / "upstream.py"
    script.write_text(bench_proxy.UPSTREAM)
    port = bench_proxy.free_port()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(port)], stderr=subprocess.PIPE, text=True
    )
    try:
        bench_proxy.wait_port(port)  # connects and leaves, as the bench does
        with socket.create_connection(("127.0.0.1", port), timeout=5) as half:
            half.sendall(b"GET /stream?n=1 HTTP/1.1\r\n")  # a head cut short
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(b"GET /stream?n=2&size=3 HTTP/1.1\r\nHost: b\r\n\r\n")
            body = b""
            deadline = time.monotonic() + 5
            while not body.endswith(b"0\r\n\r\n") and time.monotonic() < deadline:
                body += client.recv(65536)
        assert body.count(b"data: ") == 2
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert err == ""  # no traceback of its own


def test_the_readmes_say_to_install_the_bench_extra_before_the_commands() -> None:
    for readme in (ROOT / "README.md", ROOT / "benchmarks" / "README.md"):
        text = readme.read_text(encoding="utf-8")
        first_command = text.index("python -m benchmarks.")
        assert INSTALL in text[:first_command], readme
    assert needs.INSTALL == INSTALL


def test_the_benchmarks_readme_states_the_targets_the_commands_judge() -> None:
    text = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
    assert f"target {targets.DECODER_VS_FASTEST:g}x" in text
    assert f"The {targets.ENCODER_VS_SSE_STARLETTE:g}x target" in text
    assert "indicative" in text  # and what a quick run's figures are


def test_bench_tap_checks_each_meter_read_its_usage_then_times_it() -> None:
    result = bench("benchmarks.bench_tap", "--quick")
    assert result.returncode == 0, result.stderr
    rows = [line.split("|") for line in result.stdout.splitlines() if line.startswith("| ")]
    timed = {row[1].strip(): row[2].strip() for row in rows[1:]}
    assert len(timed) == 8
    assert all(value.replace(",", "").isdigit() for value in timed.values())
