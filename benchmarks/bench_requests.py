"""What one request costs: ssekit (on each HTTP/1.1 engine) beside nginx and the floor
(benchmarks/floor_proxy.py).

Each round opens 100 streams at once through each path (interleaved), the clients
leaving at the response head, as the TTFB column of ``bench_proxy`` does; it
reports the time to first byte (median of the rounds' medians), the path's user
and system CPU per request (median over the rounds), and how the time to first
byte spreads across a burst (each position's median over every burst): a proxy
that answers a burst in order shows a slope, one that answers it in one sweep
a flat line.

    python -m benchmarks.bench_requests [--rounds 7] [--http both|ssekit|h11]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from . import needs
from .bench_proxy import (
    HTTP_CHOICES,
    NGINX_CONF,
    UPSTREAM,
    add_baseline,
    engine_path,
    first_bytes,
    free_port,
    start_ssekit,
    wait_port,
)

BURST = 100
BURSTS_PER_ROUND = 10
#: Positions across a burst reported in the spread table (fractions of the burst).
SPREAD = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


async def bursts(port: int, count: int = BURSTS_PER_ROUND) -> list[list[float]]:
    """``count`` bursts of BURST streams; each burst's times to first byte (ms), sorted."""
    return [sorted(await first_bytes(port, BURST)) for _ in range(count)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_requests", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--bursts", type=int, default=BURSTS_PER_ROUND, help="bursts of 100 streams per round"
    )
    parser.add_argument(
        "--http",
        choices=tuple(HTTP_CHOICES),
        default="both",
        help="the proxy's HTTP/1.1 engine(s), side by side (default: both)",
    )
    add_baseline(parser)
    args = parser.parse_args(argv)
    needs.require(parser.prog, needs.PROXY)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="ssekit-requests-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            up = free_port()
            (tmp / "upstream.py").write_text(UPSTREAM)
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(tmp / "upstream.py"), str(up)], stderr=subprocess.DEVNULL
                )
            )
            wait_port(up)
            paths: dict[str, tuple[int, int]] = {}
            for engine in HTTP_CHOICES[args.http]:
                proxy, port = start_ssekit(up, tmp / f"{engine}.log", "--http", engine)
                procs.append(proxy)
                paths[engine_path(engine)] = (port, proxy.pid)
            if args.baseline:
                before, port = start_ssekit(up, tmp / "baseline.log", source=args.baseline)
                procs.append(before)
                paths["ssekit (baseline)"] = (port, before.pid)
            port = free_port()
            floor = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.floor_proxy", str(up), str(port)]
            )
            procs.append(floor)
            wait_port(port)
            paths["floor (benchmarks/floor_proxy.py)"] = (port, floor.pid)
            nginx = shutil.which("nginx") or "/usr/sbin/nginx"
            if os.path.exists(nginx):
                port = free_port()
                for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
                    (tmp / sub).mkdir()
                (tmp / "nginx.conf").write_text(NGINX_CONF.format(dir=tmp, upstream=up, port=port))
                ngx = subprocess.Popen(
                    [nginx, "-p", str(tmp), "-c", str(tmp / "nginx.conf")],
                    stderr=subprocess.DEVNULL,
                )
                procs.append(ngx)
                wait_port(port)
                # The worker does the work; the master only watches it.
                worker = int(
                    subprocess.check_output(["pgrep", "-P", str(ngx.pid)], text=True).split()[0]
                )
                paths["nginx"] = (port, worker)
            for port, _ in paths.values():
                asyncio.run(first_bytes(port, BURST))  # warm up
            ttfb: dict[str, list[float]] = {name: [] for name in paths}
            spread: dict[str, list[list[float]]] = {name: [] for name in paths}
            user: dict[str, list[float]] = {name: [] for name in paths}
            system: dict[str, list[float]] = {name: [] for name in paths}
            for number in range(args.rounds):
                print(f"round {number + 1} ...", file=sys.stderr, flush=True)
                for name, (port, pid) in paths.items():
                    u0, s0 = cpu(pid)
                    times = asyncio.run(bursts(port, args.bursts))
                    ttfb[name].append(statistics.median(statistics.median(t) for t in times))
                    spread[name] += times
                    u1, s1 = cpu(pid)
                    requests = BURST * args.bursts
                    user[name].append((u1 - u0) / requests * 1e6)
                    system[name].append((s1 - s0) / requests * 1e6)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait()
    base = statistics.median(ttfb["nginx"]) if "nginx" in ttfb else None
    print(f"Medians of {args.rounds} interleaved rounds of {args.bursts} x {BURST} streams")
    print()
    print("| path | TTFB p50 ms | vs nginx | user CPU us/request | system CPU us/request |")
    print("|---|---:|---:|---:|---:|")
    for name in paths:
        median = statistics.median(ttfb[name])
        ratio = f"{median / base:.2f}x" if base else "-"
        print(
            f"| {name} | {median:.1f} | {ratio} | {statistics.median(user[name]):.0f} | "
            f"{statistics.median(system[name]):.0f} |"
        )
    print()
    print("Time to first byte across a burst, ms (each position's median over every burst):")
    print()
    print("| path | " + " | ".join(f"p{round(q * 100)}" for q in SPREAD) + " |")
    print("|---|" + "---:|" * len(SPREAD))
    for name in paths:
        cells = [
            statistics.median(t[min(len(t) - 1, int(q * len(t)))] for t in spread[name])
            for q in SPREAD
        ]
        print(f"| {name} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
