"""The proxy side by side with nginx (as an SSE reverse proxy) and a direct connection.

    pip install -e '.[bench]'                  # once, from the repository root
    python -m benchmarks.bench_proxy [--quick] [--http both|ssekit|h11]   # --quick: indicative

One purpose-built upstream (a separate process) streams timestamped SSE events.
The client here measures, per path (direct, ssekit on each HTTP/1.1 engine chosen:
``ssekit`` its own, ``ssekit --http h11`` on h11; nginx when installed):
added latency per event (p50/p99) for sequential streams and for 100 concurrent
streams, one fast 100 MB stream's throughput, how long until the upstream sees
the client's disconnect, and the proxy's memory growth under a 1 KB/s client.
Added latency is measured against the direct path in the same moment (a direct
stream beside each proxied one, half an event gap apart; for 100 streams,
direct and proxied bursts in turn), after a warm-up of every path, so that the
machine's noise hits both sides of the difference alike.
With ``--resume``, also ssekit with ``--resume-store memory`` and (when Debian's
redis-server is installed; one is started on a free port, no persistence)
``--resume-store redis://...``: added latency and CPU per event beside the store
off, Redis commands per event, and memory per stored stream.
With ``--status-page``, also ssekit with its status page open throughout (a reader
on ``/_ssekit/events``, as a browser's EventSource), beside the same proxy unwatched.
Everything runs on 127.0.0.1; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from benchmarks import needs
from benchmarks.targets import QUICK_NOTE, judgement

UPSTREAM = textwrap.dedent(
    """
    import asyncio, sys, time
    closed = {}

    async def handle(reader, writer):
        try:
            head = await reader.readuntil(b"\\r\\n\\r\\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()  # a readiness probe (wait_port) connected and left
            return
        target = head.split(b" ")[1].decode()
        path, _, query = target.partition("?")
        q = dict(p.split("=") for p in query.split("&") if p)
        if path == "/closed":
            body = str(closed.get(q["id"], 0)).encode()
            writer.write(b"HTTP/1.1 200 OK\\r\\ncontent-length: %d\\r\\n"
                         b"connection: close\\r\\n\\r\\n%s" % (len(body), body))
            await writer.drain(); writer.close(); return
        n, size, gap = int(q.get("n", 10)), int(q.get("size", 100)), float(q.get("gap", 0))
        writer.write(b"HTTP/1.1 200 OK\\r\\ncontent-type: text/event-stream\\r\\n"
                     b"transfer-encoding: chunked\\r\\n\\r\\n")
        pad = b"x" * size
        try:
            for i in range(n):
                if path.endswith("/chat/completions"):  # --chat: OpenAI chunks, usage null
                    payload = (b'data: {"ts":%d,"object":"chat.completion.chunk","choices":'
                               b'[{"index":0,"delta":{"content":"%s"}}],"usage":null}\\n\\n'
                               % (time.time_ns(), pad))
                else:
                    payload = b"data: %d %s\\n\\n" % (time.time_ns(), pad)  # the wall clock
                writer.write(b"%x\\r\\n%s\\r\\n" % (len(payload), payload))
                await writer.drain()
                if gap:
                    await asyncio.sleep(gap)
            if "id" in q:  # a disconnect probe: wait for the client to go away
                while await reader.read(65536):
                    pass
                closed[q["id"]] = time.monotonic_ns()
                return
            writer.write(b"0\\r\\n\\r\\n")
            await writer.drain()
        except (ConnectionError, OSError):
            closed[q.get("id", "")] = time.monotonic_ns()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
        async with server:
            await server.serve_forever()

    asyncio.run(main())
    """
)

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 2048; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream up {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def tree(pids: list[int]) -> list[int]:
    """``pids`` and every process descended from them (workers)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, queue = list(pids), list(pids)
    while queue:
        parent = queue.pop()
        for child, of in parents.items():
            if of == parent and child not in found:
                found.append(child)
                queue.append(child)
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` and their live descendants."""
    ticks = 0
    for pid in tree(pids):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in tree(pids):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


#: ``--chat``: streams are asked for as ``POST /v1/chat/completions`` and come as OpenAI
#: chunks (each with ``"usage": null``, as with include_usage), so the proxy reads usage.
CHAT = False


def request_head(target: str) -> bytes:
    """The request for ``target`` (``/stream?...``: as a chat completion with ``--chat``)."""
    if CHAT and target.startswith("/stream?"):
        query = target.partition("?")[2]
        return (
            f"POST /v1/chat/completions?{query} HTTP/1.1\r\nHost: bench\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )
    return f"GET {target} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()


def sent_at(payload: bytes) -> int:
    """The upstream's wall clock (ns) written into an event."""
    if payload.startswith(b'data: {"ts":'):
        return int(payload[12 : payload.index(b",")])
    return int(payload.split(b" ", 2)[1])


async def get(port: int, target: str) -> asyncio.StreamReader:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    writer.write(request_head(target))
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    reader._bench_writer = writer  # type: ignore[attr-defined]
    return reader


#: Linux's receive timestamps in nanoseconds (the socket module does not name it).
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


async def recv_stamped(sock: socket.socket) -> tuple[bytes, int]:
    """One read, and when its last bytes reached this host (the kernel's receive
    timestamp, wall clock ns; the time of the read where the OS gives none)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            data, ancillary, _, _ = sock.recvmsg(1 << 16, socket.CMSG_SPACE(16))
        except BlockingIOError:
            ready = loop.create_future()
            loop.add_reader(sock.fileno(), ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_reader(sock.fileno())
            continue
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanoseconds = struct.unpack("qq", value[:16])
                return data, seconds * 1_000_000_000 + nanoseconds
        return data, time.time_ns()


async def latencies(port: int, n: int, gap: float) -> list[float]:
    """Per-event delay (ms) from the upstream's write to the event's arrival at this host.

    Arrival is the kernel's receive timestamp, not the moment this process reads: with
    100 streams at once the client reads them one after another, and that queueing is
    the client's, not the path's (counting it made a proxy, which spreads a burst out,
    look faster than no proxy). Events completed by one read share its timestamp.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        target = f"/stream?n={n}&size=100&gap={gap}"
        await loop.sock_sendall(sock, request_head(target))
        buffer = b""
        body = -1  # where the chunked body starts, once the head is in
        out: list[float] = []
        while len(out) < n:
            data, arrived = await recv_stamped(sock)
            if not data:
                raise ConnectionError(f"stream ended after {len(out)} of {n} events")
            buffer += data
            if body < 0:
                body = buffer.find(b"\r\n\r\n")
                if body < 0:
                    continue
                buffer, body = buffer[body + 4 :], 0
            while (end := buffer.find(b"\r\n")) >= 0:  # one chunk per event
                size = int(buffer[:end], 16)
                if size == 0 or len(buffer) < end + 2 + size + 2:
                    break
                payload = buffer[end + 2 : end + 2 + size]
                out.append((arrived - sent_at(payload)) / 1e6)
                buffer = buffer[end + 2 + size + 2 :]
        return out
    finally:
        sock.close()


async def concurrent_latencies(port: int, streams: int, n: int, gap: float) -> list[float]:
    results = await asyncio.gather(*(latencies(port, n, gap) for _ in range(streams)))
    return [x for r in results for x in r]


async def paired_latencies(
    port: int, direct: int, n: int, gap: float
) -> tuple[list[float], list[float]]:
    """Per-event delays (ms) through ``port`` and straight from the upstream ``direct``,
    measured together: the direct stream starts half a gap later, so their events never
    arrive at once, and both see the same moment of the machine."""

    async def beside() -> list[float]:
        await asyncio.sleep(gap / 2)
        return await latencies(direct, n, gap)

    through, straight = await asyncio.gather(latencies(port, n, gap), beside())
    return through, straight


async def paired_concurrent(
    port: int, direct: int, streams: int, n: int, gap: float
) -> tuple[list[float], list[float]]:
    """``streams`` concurrent streams through ``port`` and straight, in alternating bursts
    of ``n / 2`` events (running both at once would double the client's load)."""
    through: list[float] = []
    straight: list[float] = []
    for _ in range(2):
        straight += await concurrent_latencies(direct, streams, max(1, n // 2), gap)
        through += await concurrent_latencies(port, streams, max(1, n // 2), gap)
    return through, straight


def added(through: list[float], straight: list[float]) -> dict[str, float]:
    """Latency the path adds: its p50 and p99 minus the direct path's measured beside it."""
    return {
        "p50": statistics.median(through) - statistics.median(straight),
        "p99": pct(through, 0.99) - pct(straight, 0.99),
    }


async def warm_up(port: int) -> None:
    """A short stream and a small burst, not measured: first connections, page faults,
    pools and caches, which would otherwise land in whichever path is measured first."""
    await latencies(port, 20, 0.001)
    await concurrent_latencies(port, 20, 2, 0.001)


async def first_bytes(port: int, streams: int) -> list[float]:
    """Time (ms) to each response head when ``streams`` streams open at once."""

    async def one() -> float:
        start = time.perf_counter()
        reader = await get(port, "/stream?n=1&size=10&gap=0")
        took = (time.perf_counter() - start) * 1000
        reader._bench_writer.close()  # type: ignore[attr-defined]
        return took

    return list(await asyncio.gather(*(one() for _ in range(streams))))


async def complete_streams(port: int, streams: int, n: int, size: int) -> int:
    """How many of ``streams`` concurrent streams arrive whole: ``n`` events of the
    right shape in their own chunks, then the terminating chunk."""
    tail = b" " + b"x" * size + b"\n\n\r\n"
    if CHAT:
        tail = b"x" * size + b'"}}],"usage":null}\n\n\r\n'

    async def one() -> bool:
        reader = await get(port, f"/stream?n={n}&size={size}&gap=0.01")
        try:
            for _ in range(n):
                size_line = await reader.readuntil(b"\r\n")
                data = await reader.readexactly(int(size_line, 16) + 2)
                if not (data.startswith(b"data: ") and data.endswith(tail)):
                    return False
            return await reader.readexactly(5) == b"0\r\n\r\n"
        except (asyncio.IncompleteReadError, ValueError, ConnectionError):
            return False
        finally:
            reader._bench_writer.close()  # type: ignore[attr-defined]

    return sum(await asyncio.gather(*(one() for _ in range(streams))))


async def throughput(port: int, megabytes: int) -> float:
    size = 64 * 1024 - 64
    n = megabytes * 1024 * 1024 // size
    reader = await get(port, f"/stream?n={n}&size={size}&gap=0")
    start, received = time.perf_counter(), 0
    while True:
        data = await reader.read(1 << 20)
        if not data:
            break
        received += len(data)
        if data.endswith(b"0\r\n\r\n"):
            break
    elapsed = time.perf_counter() - start
    reader._bench_writer.close()  # type: ignore[attr-defined]
    return received / elapsed / 1e6


async def disconnect_ms(port: int, upstream: int, probe: str) -> float:
    reader = await get(port, f"/stream?n=1&size=10&gap=0&id={probe}")
    await reader.readuntil(b"\n\n")
    writer = reader._bench_writer  # type: ignore[attr-defined]
    closed = time.monotonic_ns()
    writer.transport.abort()
    for _ in range(200):
        await asyncio.sleep(0.005)
        seen = await get_closed(upstream, probe)
        if seen:
            return (seen - closed) / 1e6
    return float("inf")


async def get_closed(upstream: int, probe: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", upstream)
    writer.write(f"GET /closed?id={probe} HTTP/1.1\r\nHost: b\r\n\r\n".encode())
    body = (await reader.read()).split(b"\r\n\r\n", 1)[1]
    writer.close()
    return int(body or 0)


async def slow_client_growth(port: int, pids: list[int], seconds: float) -> int:
    """RSS growth (KiB) of the proxy while a client reads 1 KB/s from a fast stream."""
    before = rss_kib(pids)
    n = 2000  # ~128 MB offered: far more than socket buffers hold
    reader = await get(port, f"/stream?n={n}&size={64 * 1024 - 64}&gap=0")
    peak = before
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await reader.read(1024)
        peak = max(peak, rss_kib(pids))
        await asyncio.sleep(1)
    reader._bench_writer.transport.abort()  # type: ignore[attr-defined]
    return peak - before


def redis_info(port: int, section: str, field: str) -> int:
    """One integer field of Redis's INFO (RESP by hand: the bench needs no redis package)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"INFO {section}\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            data += sock.recv(65536)
        length = int(data[1 : data.index(b"\r\n")])
        while len(data) < data.index(b"\r\n") + 2 + length:
            data += sock.recv(65536)
    for line in data.decode().splitlines():
        if line.startswith(field + ":"):
            return int(line.split(":", 1)[1])
    raise RuntimeError(f"no {field} in INFO {section}")


async def measure_resume(
    port: int, direct: int, pids: list[int], quick: bool, redis_port: int | None
) -> dict[str, float]:
    """Latency and CPU per event with a resume store; Redis commands per event; memory per
    stored stream (proxy RSS for the memory store, Redis used_memory for Redis)."""
    seq, seq_direct = await paired_latencies(port, direct, 60 if quick else 300, 0.005)
    streams, events = 100, 10 if quick else 40
    cpu = cpu_seconds(pids)
    commands = redis_info(redis_port, "stats", "total_commands_processed") if redis_port else 0
    conc = await concurrent_latencies(port, streams, events, 0.02)
    cpu_event = (cpu_seconds(pids) - cpu) / (streams * events) * 1e6
    conc_direct = await concurrent_latencies(direct, streams, events, 0.02)
    per_event = (
        (redis_info(redis_port, "stats", "total_commands_processed") - commands - 1)
        / (streams * events)
        if redis_port
        else 0.0
    )
    kept, kept_events = 300, 40  # 40 events of ~130 stored bytes each
    before = redis_info(redis_port, "memory", "used_memory") if redis_port else rss_kib(pids) * 1024
    whole = await complete_streams(port, kept, kept_events, 100)
    await asyncio.sleep(0.5)  # the Redis writer's last batches
    after = redis_info(redis_port, "memory", "used_memory") if redis_port else rss_kib(pids) * 1024
    seq_added, conc_added = added(seq, seq_direct), added(conc, conc_direct)
    return {
        "p50": seq_added["p50"],
        "p99": seq_added["p99"],
        "c50": conc_added["p50"],
        "c99": conc_added["p99"],
        "cpu_event_us": cpu_event,
        "commands_event": per_event,
        "bytes_stream": (after - before) / kept,
        "whole": whole,
    }


def start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], int] | None:
    server = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if server is None:
        return None
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    wait_port(port)
    return proc, port


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def measure(
    port: int, upstream: int, pids: list[int], quick: bool, name: str
) -> dict[str, float]:
    """The path's figures; its latencies are added ones (absolute for the direct path)."""
    n, streams, events = 60 if quick else 300, 100, 10 if quick else 40
    if port == upstream:
        seq = await latencies(port, n, 0.005)
        conc = await concurrent_latencies(port, streams, events, 0.02)
        lat = {"p50": statistics.median(seq), "p99": pct(seq, 0.99),
               "c50": statistics.median(conc), "c99": pct(conc, 0.99)}  # fmt: skip
        cpu_event = 0.0
    else:
        seq_added = added(*await paired_latencies(port, upstream, n, 0.005))
        cpu = cpu_seconds(pids)
        conc, conc_direct = await paired_concurrent(port, upstream, streams, events, 0.02)
        cpu_event = (cpu_seconds(pids) - cpu) / (streams * events) * 1e6
        conc_added = added(conc, conc_direct)
        lat = {"p50": seq_added["p50"], "p99": seq_added["p99"],
               "c50": conc_added["p50"], "c99": conc_added["p99"]}  # fmt: skip
    megabytes = 20 if quick else 100
    cpu = cpu_seconds(pids)
    mbps = await throughput(port, megabytes)
    cpu_mb = (cpu_seconds(pids) - cpu) / megabytes * 1000
    # One burst's p50 swings by a third on a shared VM: the median of ten bursts' p50s.
    ttfb = [statistics.median(await first_bytes(port, 100)) for _ in range(3 if quick else 10)]
    whole = await complete_streams(port, 500, 5 if quick else 20, 100)
    disc = [await disconnect_ms(port, upstream, f"{name.replace(' ', '_')}{i}") for i in range(5)]
    growth = await slow_client_growth(port, pids, 3 if quick else 20) if pids else 0
    return {
        **lat,
        "cpu_event_us": cpu_event,
        "mbps": mbps,
        "cpu_mb_ms": cpu_mb,
        "ttfb50": statistics.median(ttfb),
        "whole500": whole,
        "disconnect": statistics.median(disc),
        "growth": growth,
    }


def start_ssekit(
    up_port: int, log: Path, *extra: str, source: str | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """The proxy in its own process; its log goes to ``log`` (shown if a round fails).
    ``source``: run the ssekit package found there instead (a checkout of an earlier
    commit, for a before/after comparison in one run: ``--baseline``)."""
    port = free_port()
    env = None if source is None else {**os.environ, "PYTHONPATH": source}
    proxy = subprocess.Popen(
        [sys.executable, "-m", "ssekit", "proxy", "--upstream", f"http://127.0.0.1:{up_port}",
         "--listen", f"127.0.0.1:{port}", "--max-connections", "4096",
         "--no-access-log",  # as nginx's access_log off below: like for like
         "--pool-size", "64",  # as nginx's keepalive 64 below
         "--loop", os.environ.get("SSEKIT_BENCH_LOOP", "auto"), *extra],
        stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=env,
    )  # fmt: skip
    wait_port(port)
    time.sleep(0.5)  # workers, if any, are up too
    return proxy, port


#: The status page's feed, read as a browser's EventSource would, until the proxy goes away
#: (reconnecting after a drop, at most 100 times).
FEED_READER = textwrap.dedent(
    """
    import socket, sys, time
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=60) as sock:
                sock.sendall(b"GET /_ssekit/events HTTP/1.1\\r\\nhost: bench\\r\\n\\r\\n")
                while sock.recv(65536):
                    pass
        except OSError:
            sys.exit()
        time.sleep(0.5)
    """
)


#: ``--http`` choices: the engines each choice runs, the first also for workers and resume.
HTTP_CHOICES: dict[str, tuple[str, ...]] = {
    "both": ("ssekit", "h11"),
    "ssekit": ("ssekit",),
    "h11": ("h11",),
}


def add_baseline(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="also a proxy run from the ssekit package in DIR (a checkout of an earlier "
        "commit, e.g. made with git worktree add), on its default engine: before and after "
        "in one run",
    )


def engine_path(engine: str) -> str:
    """A path's name for the proxy on ``engine``: ``ssekit``, ``ssekit --http h11``."""
    return "ssekit" if engine == "ssekit" else f"ssekit --http {engine}"


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_proxy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer events, 20 MB, 3 s slow client, one round: indicative figures",
    )
    parser.add_argument(
        "--http",
        choices=tuple(HTTP_CHOICES),
        default="both",
        help="the proxy's HTTP/1.1 engine(s), side by side (default: both)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported")
    add_baseline(parser)
    parser.add_argument("--workers", type=int, default=0, help="also ssekit --workers N (0: no)")
    parser.add_argument(
        "--resume", action="store_true", help="also ssekit with the memory and Redis resume stores"
    )
    parser.add_argument(
        "--chat",
        action="store_true",
        help="streams as POST /v1/chat/completions of OpenAI chunks (the proxy reads their "
        "usage and first token) instead of GET of plain events",
    )
    parser.add_argument(
        "--status-page",
        action="store_true",
        help="also ssekit with its status page open throughout (a reader on /_ssekit/events)",
    )
    args = parser.parse_args(argv)
    global CHAT
    CHAT = args.chat
    needs.require(parser.prog, needs.PROXY)
    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="ssekit-bench-"))
    try:
        up_port = free_port()
        (tmp / "upstream.py").write_text(UPSTREAM)
        procs.append(subprocess.Popen([sys.executable, str(tmp / "upstream.py"), str(up_port)]))
        wait_port(up_port)
        paths: dict[str, tuple[int, list[int]]] = {"direct": (up_port, [])}

        engines = HTTP_CHOICES[args.http]
        for engine in engines:
            proxy, proxy_port = start_ssekit(up_port, tmp / f"{engine}.log", "--http", engine)
            procs.append(proxy)
            paths[engine_path(engine)] = (proxy_port, [proxy.pid])
        if args.baseline:
            before, before_port = start_ssekit(up_port, tmp / "baseline.log", source=args.baseline)
            procs.append(before)
            paths["ssekit (baseline)"] = (before_port, [before.pid])
        first = ("--http", engines[0])  # workers and the resume stores run on this engine
        if args.workers:
            workers, workers_port = start_ssekit(
                up_port, tmp / "workers.log", "--workers", str(args.workers), *first
            )
            procs.append(workers)
            paths[f"ssekit --workers {args.workers}"] = (workers_port, [workers.pid])

        if args.status_page:
            watched, watched_port = start_ssekit(up_port, tmp / "watched.log", *first)
            procs.append(watched)
            paths["ssekit, status page open"] = (watched_port, [watched.pid])
            # In a process of its own, as a browser is: a thread here would share the
            # measuring client's GIL and show up in its latencies.
            procs.append(subprocess.Popen([sys.executable, "-c", FEED_READER, str(watched_port)]))

        resume_paths: dict[str, int | None] = {}  # name -> the Redis port (None: memory)
        if args.resume:
            memory, memory_port = start_ssekit(
                up_port, tmp / "memory.log", "--resume-store", "memory", *first
            )
            procs.append(memory)
            paths["ssekit, memory store"] = (memory_port, [memory.pid])
            resume_paths["ssekit, memory store"] = None
            redis = start_redis(tmp)
            if redis is not None:
                procs.append(redis[0])
                url = f"redis://127.0.0.1:{redis[1]}/0"
                remote, remote_port = start_ssekit(
                    up_port, tmp / "redis.log", "--resume-store", url, *first
                )
                procs.append(remote)
                paths["ssekit, redis store"] = (remote_port, [remote.pid])
                resume_paths["ssekit, redis store"] = redis[1]

        nginx = shutil.which("nginx") or (
            "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
        )
        if nginx:
            nginx_port = free_port()
            for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
                (tmp / sub).mkdir()
            conf = tmp / "nginx.conf"
            conf.write_text(NGINX_CONF.format(dir=tmp, upstream=up_port, port=nginx_port))
            ngx = subprocess.Popen(
                [nginx, "-p", str(tmp), "-c", str(conf)], stderr=subprocess.DEVNULL
            )
            procs.append(ngx)
            wait_port(nginx_port)
            paths["nginx"] = (nginx_port, [ngx.pid])

        for port, _ in paths.values():
            asyncio.run(warm_up(port))
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
        for number in range(1 if args.quick else args.rounds):
            for name, (port, pids) in paths.items():  # interleaved: noise hits every path
                print(f"round {number + 1}: measuring {name} ...", file=sys.stderr, flush=True)
                try:
                    if name in resume_paths:
                        result = asyncio.run(
                            measure_resume(port, up_port, pids, args.quick, resume_paths[name])
                        )
                    else:
                        result = asyncio.run(measure(port, up_port, pids, args.quick, name))
                except Exception:
                    for log in tmp.glob("*.log"):  # what the proxies said, for the failure
                        lines = log.read_text(errors="replace").splitlines()
                        problems = [x for x in lines if "outcome=complete" not in x]
                        print(f"--- {log.name}", *problems[-20:], sep="\n", file=sys.stderr)
                    raise
                rounds[name].append(result)
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    results = {
        name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for name, runs in rounds.items()
    }
    resumed = {name: results.pop(name) for name in resume_paths}
    main_path = engine_path(HTTP_CHOICES[args.http][0])
    out = report(results, len(rounds["direct"]), main_path, quick=args.quick)
    if resumed:
        out += report_resume(results, resumed, main_path, quick=args.quick)
    return out


#: Below a table whose added latencies had one under the direct path's own.
NOISE_NOTE = (
    "0.000* : measured below the direct path beside it, so within this run's noise (a proxy "
    "cannot take less time than no proxy); shown as 0."
)


def added_ms(value: float) -> str:
    """An added latency for the table; one below zero is noise, never a faster proxy."""
    return f"{value:.3f}" if value >= 0 else "0.000*"


def footnotes(lines: list[str]) -> list[str]:
    return ["", NOISE_NOTE] if any("0.000*" in line for line in lines) else []


def report_resume(
    results: dict[str, dict[str, float]],
    resumed: dict[str, dict[str, float]],
    main_path: str,
    *,
    quick: bool,
) -> list[str]:
    """The resume stores beside the store off (the ``main_path`` row), same rounds."""
    off = results[main_path]
    out = [
        "",
        "## Proxy: resumable streams",
        "",
        "Latency added to the direct connection's; CPU of the proxy process; Redis commands "
        "(INFO total_commands_processed) per event of the 100-stream run, liveness included; "
        "memory per stored stream of 40 events of 100 bytes (proxy RSS growth for memory, "
        "Redis used_memory growth for Redis).",
        "",
        "| store | added p50 ms (seq) | added p99 ms (seq) | added p50 ms (100 conc) | "
        "added p99 ms (100 conc) | CPU us/event (100 conc) | Redis commands/event | "
        "memory per stored stream |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = {"off": off, **{name.removeprefix("ssekit, ").removesuffix(" store"): r
                           for name, r in resumed.items()}}  # fmt: skip
    for name, r in rows.items():
        lat = [added_ms(r[k]) for k in ("p50", "p99", "c50", "c99")]
        commands = f"{r['commands_event']:.2f}" if name == "redis" else "-"
        memory = f"{r['bytes_stream'] / 1024:.1f} KiB" if name != "off" else "-"
        out.append(
            f"| {name} | {lat[0]} | {lat[1]} | {lat[2]} | {lat[3]} | "
            f"{r['cpu_event_us']:.0f} | {commands} | {memory} |"
        )
    out += footnotes(out)
    checks = []
    if "memory" in rows:
        added = rows["memory"]["p50"] - off["p50"]
        checks.append((f"memory store: p50 within +0.1 ms of the store off ({added:+.3f})",
                       added <= 0.1))  # fmt: skip
        checks.append(("memory store: 300 streams whole", rows["memory"]["whole"] == 300))
    if "redis" in rows:
        added = rows["redis"]["p50"] - off["p50"]
        checks.append((f"redis store: p50 within +0.5 ms of the store off ({added:+.3f})",
                       added <= 0.5))  # fmt: skip
        checks.append(("redis store: 300 streams whole", rows["redis"]["whole"] == 300))
    out += ["", "### Targets (resumable streams)", "", *([QUICK_NOTE, ""] if quick else [])]
    out += [f"- {label}: {judgement(ok, quick=quick)}" for label, ok in checks]
    print("\n".join(out), flush=True)
    return out


def report(
    results: dict[str, dict[str, float]], rounds: int, main_path: str, *, quick: bool
) -> list[str]:
    """The table, then the targets, held by the ``main_path`` row (ssekit's own engine, unless
    only h11 ran); h11's engine beside it when both ran."""
    out = [
        "## Proxy",
        "",
        f"Medians of {rounds} interleaved round(s); latency is added to the direct "
        "connection's, measured beside it (direct: absolute).",
        "",
        "| path | p50 ms (seq) | p99 ms (seq) | p50 ms (100 conc) | p99 ms (100 conc) | "
        "CPU us/event (100 conc) | 1-stream MB/s | CPU ms/MB | TTFB p50 ms (100 at once) | "
        "500 conc whole | disconnect seen, ms | RSS growth, 1 KB/s client |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        keys = ("p50", "p99", "c50", "c99")
        lat = [f"{r[k]:.3f}" if name == "direct" else added_ms(r[k]) for k in keys]
        growth = f"{r['growth'] / 1024:.1f} MB" if name != "direct" else "-"
        cpu_e = f"{r['cpu_event_us']:.0f}" if name != "direct" else "-"
        cpu_m = f"{r['cpu_mb_ms']:.1f}" if name != "direct" else "-"
        out.append(
            f"| {name} | {lat[0]} | {lat[1]} | {lat[2]} | {lat[3]} | {cpu_e} | "
            f"{r['mbps']:.0f} | {cpu_m} | {r['ttfb50']:.1f} | {r['whole500']:.0f}/500 | "
            f"{r['disconnect']:.1f} | {growth} |"
        )
    out += footnotes(out)
    s = results[main_path]
    checks = [
        ("added p50 <= 0.15 ms (sequential)", s["p50"] <= 0.15),
        ("added p99 <= 1 ms (sequential)", s["p99"] <= 1),
        ("added p99 <= 3 ms with 100 concurrent", s["c99"] <= 3),
        ("500 concurrent streams all whole", s["whole500"] == 500),
        ("disconnect seen upstream <= 10 ms", s["disconnect"] <= 10),
        ("memory growth <= 5 MB under a 1 KB/s client", s["growth"] <= 5 * 1024),
    ]
    if "nginx" in results:
        n = results["nginx"]
        cpu_ratio = s["cpu_event_us"] / max(n["cpu_event_us"], 1e-9)
        mb_ratio = s["cpu_mb_ms"] / max(n["cpu_mb_ms"], 1e-9)
        tp_ratio = s["mbps"] / n["mbps"]
        ttfb_ratio = s["ttfb50"] / n["ttfb50"]
        checks += [
            (f"CPU per event <= 3x nginx ({cpu_ratio:.1f}x)", cpu_ratio <= 3),
            (f"1-stream throughput >= 0.7x nginx ({tp_ratio:.2f}x)", tp_ratio >= 0.7),
            (f"CPU per MB <= 3x nginx ({mb_ratio:.1f}x)", mb_ratio <= 3),
            (f"TTFB p50, 100 at once <= 1.5x nginx ({ttfb_ratio:.2f}x)", ttfb_ratio <= 1.5),
        ]
    out += ["", f"### Targets ({main_path})", "", *([QUICK_NOTE, ""] if quick else [])]
    out += [f"- {label}: {judgement(ok, quick=quick)}" for label, ok in checks]
    h11 = results.get(engine_path("h11"))
    if h11 is not None and main_path != engine_path("h11"):
        out += ["", "### h11's engine beside ssekit's own (ratios, h11 / ssekit)", ""]
        for key, label in (
            ("cpu_event_us", "CPU per event"),
            ("cpu_mb_ms", "CPU per MB"),
            ("ttfb50", "TTFB p50, 100 at once"),
            ("mbps", "1-stream MB/s"),
        ):
            out.append(f"- {label}: {h11[key] / max(s[key], 1e-9):.2f}x")  # fmt: skip
    print("\n".join(out), flush=True)
    return out


if __name__ == "__main__":
    main()
