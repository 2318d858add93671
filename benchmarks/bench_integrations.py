"""ssekit.httpx beside httpx-sse, and ssekit.starlette beside sse-starlette, through uvicorn.

Client rows: one uvicorn process serves the same OpenAI-style stream (openai-en payload cut
at 1460 bytes) to every client; each client reads the whole response with httpx and decodes
it (``iter_sse()``), and its events are checked first. Server rows: one uvicorn process
serves the same producer (dicts, as sse-starlette users write them) through each
``EventSourceResponse``; a client reads raw bytes; events/s is wall time, CPU per event is
the server process's user+system time over the events. Runs are interleaved, medians of 5.

python -m benchmarks.bench_integrations [--quick]   # pip install -e '.[bench]'
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import time
from collections.abc import Callable
from random import Random
from typing import Any

from benchmarks import needs, payloads

TEXT = '{"choices":[{"index":0,"delta":{"content":"hello 你好"}}]}'


def _stream_chunks(quick: bool) -> tuple[list[bytes], int]:
    events = payloads.openai_events(1000 if quick else 4000, payloads.EN, Random(payloads.SEED))
    data = b"".join(events)
    return payloads.cut_every(data, 1460), len(events)


def client_app(chunks: list[bytes]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        head = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def server_app(count: int) -> Any:
    from sse_starlette import EventSourceResponse as PeerResponse
    from starlette.applications import Starlette
    from starlette.routing import Route

    from ssekit.starlette import EventSourceResponse

    async def events() -> Any:
        for n in range(count):
            yield {"data": TEXT, "id": str(n)}

    async def ours(request: Any) -> Any:
        return EventSourceResponse(events())

    async def peer(request: Any) -> Any:
        return PeerResponse(events())

    return Starlette(routes=[Route("/ssekit", ours), Route("/sse-starlette", peer)])


def _serve(kind: str, quick: bool, sock: socket.socket) -> None:
    import uvicorn

    if kind == "client":
        app = client_app(_stream_chunks(quick)[0])
    else:
        app = server_app(_count(quick))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


def _count(quick: bool) -> int:
    return 2_000 if quick else 10_000


def _start(kind: str, quick: bool) -> tuple[multiprocessing.Process, str]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    process = multiprocessing.get_context("fork").Process(
        target=_serve, args=(kind, quick, sock), daemon=True
    )
    process.start()
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(url + "/", timeout=1)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
    return process, url


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ssekit_client(url: str) -> list[tuple[str, str]]:
    import httpx

    from ssekit.httpx import connect_sse

    with httpx.Client() as client, connect_sse(client, "GET", url) as source:
        return [(e.id, e.data) for e in source.iter_sse()]


def _httpx_sse_client(url: str) -> list[tuple[str, str]]:
    import httpx
    import httpx_sse

    with httpx.Client() as client, httpx_sse.connect_sse(client, "GET", url) as source:
        return [(e.id, e.data) for e in source.iter_sse()]


def _read_raw(url: str) -> int:
    import httpx

    size = 0
    with httpx.Client() as client, client.stream("GET", url) as response:
        for chunk in response.iter_raw():
            size += len(chunk)
    return size


def bench_clients(quick: bool) -> list[str]:
    process, url = _start("client", quick)
    try:
        _, count = _stream_chunks(quick)
        clients: dict[str, Callable[[str], list[tuple[str, str]]]] = {
            "ssekit.httpx iter_sse()": _ssekit_client,
            "httpx-sse iter_sse()": _httpx_sse_client,
        }
        expected = _ssekit_client(url)
        assert len(expected) == count, (len(expected), count)
        for name, client in clients.items():
            assert client(url) == expected, f"{name} decoded the stream differently"
        times: dict[str, list[float]] = {name: [] for name in clients}
        for _ in range(5):
            for name, client in clients.items():
                started = time.perf_counter()
                client(url)
                times[name].append(time.perf_counter() - started)
    finally:
        process.kill()
    rates = {name: count / statistics.median(t) for name, t in times.items()}
    ours = rates["ssekit.httpx iter_sse()"]
    lines = [
        f"### httpx clients: one uvicorn response, {count} OpenAI-style events, 1460 B writes",
        "",
        "| client | events/s | ssekit speed-up |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {rate:,.0f} | {ours / rate:.2f}x |" for name, rate in rates.items()]
    return [*lines, ""]


def bench_servers(quick: bool) -> list[str]:
    process, url = _start("server", quick)
    count = _count(quick)
    paths = {"ssekit.starlette": "/ssekit", "sse-starlette": "/sse-starlette"}
    try:
        sizes = {name: _read_raw(url + path) for name, path in paths.items()}
        walls: dict[str, list[float]] = {name: [] for name in paths}
        cpus: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(5):
            for name, path in paths.items():
                cpu = _cpu(process.pid or 0)
                started = time.perf_counter()
                assert _read_raw(url + path) == sizes[name]
                walls[name].append(time.perf_counter() - started)
                cpus[name].append(_cpu(process.pid or 0) - cpu)
    finally:
        process.kill()
    lines = [
        f"### EventSourceResponse through uvicorn: {count} events from the same producer",
        "",
        "| server | events/s | server CPU µs/event | ssekit speed-up | bytes |",
        "|---|---:|---:|---:|---:|",
    ]
    ours = count / statistics.median(walls["ssekit.starlette"])
    for name in paths:
        rate = count / statistics.median(walls[name])
        cpu_us = statistics.median(cpus[name]) / count * 1e6
        lines.append(
            f"| {name} | {rate:,.0f} | {cpu_us:.1f} | {ours / rate:.2f}x | {sizes[name]} |"
        )
    return [*lines, ""]


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_integrations",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer events and repetitions: indicative only"
    )
    quick = parser.parse_args(argv).quick
    needs.require(parser.prog, needs.INTEGRATIONS)
    lines = ["## Integrations", "", *bench_clients(quick), *bench_servers(quick)]
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
