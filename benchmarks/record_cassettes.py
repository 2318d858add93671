"""Record the default benchmark cassettes (benchmarks/cassettes/) from the built-in mock.

    python -m benchmarks.record_cassettes [DIR]

No provider traffic: the mock streams, a jittery "network" between it and the
proxy re-cuts its body the way real reads come (several events in one read, an
event or a character split across two, irregular gaps, seeded), and
``ssekit proxy --record`` writes what arrived. Three streams: an English and
Chinese chat answer in coalesced reads, the same in small reads, and numbered
events cut by the upstream after 12 of 20.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
from pathlib import Path

import anyio
import anyio.abc
import httpx

from ssekit.proxy import MockConfig, ProxyConfig, serve, serve_mock

HERE = Path(__file__).resolve().parent / "cassettes"
CHAT = {"model": "ssekit-mock", "stream": True, "messages": [{"role": "user", "content": "hi"}]}

#: name, method, path, request body, (smallest, largest) read, (shortest, longest) gap in s
STREAMS = (
    ("mock-chat-coalesced", "POST", "/v1/chat/completions", CHAT, (200, 1400), (0.005, 0.12)),
    ("mock-chat-small-reads", "POST", "/v1/chat/completions", CHAT, (1, 48), (0.0, 0.03)),
    ("mock-events-cut", "GET", "/v1/events?count=20&cut_after=12", None, (8, 90), (0.0, 0.08)),
)


async def _network(
    stream: anyio.abc.SocketStream, mock: str, reads: tuple[int, int], gaps: tuple[float, float]
) -> None:
    """Read one request, stream the mock's answer back re-cut into jittered chunks."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    method, target, _ = lines[0].split(" ")
    length = next((int(v) for k, _, v in (ln.partition(": ") for ln in lines[1:])
                   if k.lower() == "content-length"), 0)  # fmt: skip
    while len(body) < length:
        body += await stream.receive()
    rnd = random.Random(f"{method} {target}")
    pending = b""
    complete = False
    async with (
        httpx.AsyncClient() as client,
        client.stream(method, mock + target, content=body or None) as response,
    ):
        await stream.send(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        try:
            async for piece in response.aiter_raw():
                pending += piece
                while len(pending) >= reads[1]:
                    size = rnd.randint(*reads)
                    await anyio.sleep(rnd.uniform(*gaps))
                    await stream.send(b"%x\r\n%s\r\n" % (size, pending[:size]))
                    pending = pending[size:]
            complete = True
        except httpx.RemoteProtocolError:
            pass  # the mock cut the stream: so does the network, after what it has
        while pending:
            size = rnd.randint(*reads)
            await anyio.sleep(rnd.uniform(*gaps))
            await stream.send(b"%x\r\n%s\r\n" % (len(pending[:size]), pending[:size]))
            pending = pending[size:]
    if complete:
        await stream.send(b"0\r\n\r\n")
    await stream.aclose()


async def record(into: Path) -> list[Path]:
    written = []
    with tempfile.TemporaryDirectory() as scratch:
        async with anyio.create_task_group() as tg:
            host, port = await tg.start(serve_mock, MockConfig(listen_port=0, delay=0.02))
            mock = f"http://{host}:{port}"
            for name, method, path, body, reads, gaps in STREAMS:
                listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
                net_port = listener.extra(anyio.abc.SocketAttribute.local_port)

                async def handle(
                    stream: anyio.abc.SocketStream,
                    reads: tuple[int, int] = reads,
                    gaps: tuple[float, float] = gaps,
                ) -> None:
                    await _network(stream, mock, reads, gaps)

                tg.start_soon(listener.serve, handle)
                directory = Path(scratch) / name
                config = ProxyConfig(
                    upstream=f"http://127.0.0.1:{net_port}", listen_port=0, record=str(directory)
                )
                bound = await tg.start(
                    lambda task_status, c=config: serve(c, task_status=task_status)
                )
                async with httpx.AsyncClient(timeout=30) as client:
                    try:
                        await client.request(
                            method, f"http://{bound[0]}:{bound[1]}{path}", json=body
                        )
                    except httpx.RemoteProtocolError:
                        pass  # the cut stream
                for _ in range(200):  # the recorder's thread writes it: 10 s at most
                    found = sorted(directory.glob("*.jsonl"))
                    if found:
                        break
                    await anyio.sleep(0.05)
                target = into / f"{name}.jsonl"
                shutil.copyfile(found[0], target)
                written.append(target)
            tg.cancel_scope.cancel()
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.record_cassettes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("directory", nargs="?", default=str(HERE), help="where to write them")
    args = parser.parse_args(argv)
    Path(args.directory).mkdir(parents=True, exist_ok=True)
    for path in anyio.run(record, Path(args.directory)):
        print(path)


if __name__ == "__main__":
    main()
