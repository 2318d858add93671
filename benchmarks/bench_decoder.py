"""Decoder throughput: ssekit and its Python peers on the same payloads, in one process.

    python -m benchmarks.bench_decoder [--quick] [--repeat N]   # pip install -e '.[bench]'

Each peer's output is checked first; a peer that decodes a workload wrongly is
reported WRONG (with the reason) and not timed. Runs are interleaved across peers,
medians of N repetitions after a warm-up; peak memory comes from a separate
tracemalloc pass, never from a timed one.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import tracemalloc
from collections.abc import Iterable
from pathlib import Path

from benchmarks import needs, payloads
from benchmarks.peers import PEERS, SSEKIT, CompiledDecoder, Peer, PureDecoder, check
from benchmarks.targets import (
    DECODER_VS_FASTEST,
    DECODER_VS_HTTPX_SSE,
    LARGE_EVENTS_VS_HTTPX_SSE,
    QUICK_NOTE,
    verdict,
)

MIB = 1024 * 1024
CLASSES = {"ssekit (compiled)": CompiledDecoder, "ssekit (pure)": PureDecoder}


def timed(peer: Peer, chunks: list[bytes]) -> float:
    gc.collect()
    start = time.perf_counter()
    peer(chunks)
    return time.perf_counter() - start


def peak_kib(peer: Peer, chunks: list[bytes]) -> float:
    gc.collect()
    tracemalloc.start()
    peer(chunks)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 1024


def run_workload(work: payloads.Workload, repeat: int) -> dict[str, dict[str, object]]:
    results: dict[str, dict[str, object]] = {}
    correct = {}
    for name, peer in PEERS.items():
        reason = check(peer, work.chunks, work.expected)
        results[name] = {"wrong": reason}
        if reason is None:
            correct[name] = peer
            timed(peer, work.chunks)  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in correct}
    for _ in range(repeat):
        for name, peer in correct.items():  # interleaved: noise hits every peer alike
            samples[name].append(timed(peer, work.chunks))
    for name, peer in correct.items():
        median = statistics.median(samples[name])
        results[name].update(
            seconds=median,
            events_per_s=len(work.expected) / median,
            mb_per_s=work.size / median / 1e6,
            peak_kib=peak_kib(peer, work.chunks),
        )
    return results


def table(work: payloads.Workload, results: dict[str, dict[str, object]]) -> list[str]:
    bases = {name: results[name]["seconds"] for name in SSEKIT}
    columns = " | ".join(f"{name.removeprefix('ssekit ').strip('()')} speed-up" for name in SSEKIT)
    lines = [
        f"### {work.name} ({len(work.expected)} events, {work.size / 1e6:.2f} MB, "
        f"{len(work.chunks)} chunks)",
        "",
        f"| decoder | events/s | MB/s | {columns} | peak KiB |",
        "|---|---:|---:|" + "---:|" * len(SSEKIT) + "---:|",
    ]
    for name, r in results.items():
        if r["wrong"] is not None:
            lines.append(f"| {name} | WRONG: {r['wrong']} | |" + " |" * len(SSEKIT) + " |")
            continue
        seconds = r["seconds"]
        assert isinstance(seconds, float)
        ratios = " | ".join(f"{seconds / base:.2f}x" for base in bases.values())  # type: ignore[operator]
        lines.append(
            f"| {name} | {r['events_per_s']:,.0f} | {r['mb_per_s']:.1f} | {ratios} | "
            f"{r['peak_kib']:,.0f} |"
        )
    return [*lines, ""]


#: What each implementation is held to against the fastest correct Python peer
#: (issue 24 for the compiled one, issue 9 for the pure one).
TARGET = {"ssekit (compiled)": 3.0, "ssekit (pure)": DECODER_VS_FASTEST}


def targets(
    all_results: list[tuple[payloads.Workload, dict[str, dict[str, object]]]],
    *,
    quick: bool = False,
) -> list[str]:
    lines = ["### Targets", "", *([QUICK_NOTE, ""] if quick else [])]

    def judged(ratio: float, target: float) -> str:
        return verdict(ratio >= target, f">= {target:g}x", quick=quick)

    for work, results in all_results:
        peers = {
            n: r["seconds"] for n, r in results.items() if n not in SSEKIT and r["wrong"] is None
        }
        if not peers:
            continue
        fastest = min(peers, key=lambda n: peers[n])  # type: ignore[arg-type,return-value]
        parts = []
        for name in SSEKIT:
            base = results[name]["seconds"]
            ratio = peers[fastest] / base  # type: ignore[operator]
            label = name.removeprefix("ssekit ").strip("()")
            parts.append(f"{label} {ratio:.2f}x {judged(ratio, TARGET[name])}")
        line = f"- {work.name}, against {fastest}: " + "; ".join(parts)
        pure = results["ssekit (pure)"]["seconds"]
        if "httpx-sse" in peers and work.name.startswith("openai"):
            hx = peers["httpx-sse"] / pure  # type: ignore[operator]
            line += f"; pure {hx:.2f}x httpx-sse {judged(hx, DECODER_VS_HTTPX_SSE)}"
        if work.name.startswith("large") and "httpx-sse" in peers:
            hx = peers["httpx-sse"] / pure  # type: ignore[operator]
            line += f"; pure {hx:.2f}x httpx-sse MB/s {judged(hx, LARGE_EVENTS_VS_HTTPX_SSE)}"
        lines.append(line)
    return [*lines, ""]


def linearity(repeat: int) -> list[str]:
    lines = ["### ssekit MB/s by event size (linear: flat MB/s)", ""]
    for work in payloads.scaling():
        rates = []
        for name in SSEKIT:
            peer = PEERS[name]
            assert check(peer, work.chunks, work.expected) is None
            median = statistics.median(timed(peer, work.chunks) for _ in range(repeat))
            label = name.removeprefix("ssekit ").strip("()")
            rates.append(f"{label} {work.size / median / 1e6:.1f} MB/s")
        lines.append(f"- {work.name}: " + ", ".join(rates))
    return [*lines, ""]


def per_piece(decoder_class: type, pieces: Iterable[bytes], count: int) -> float:
    """Seconds per piece to feed ``pieces`` (``count`` of them) to a fresh decoder, then close."""
    decoder = decoder_class(max_event_size=32 * MIB)
    feed = decoder.feed
    events = 0
    gc.collect()
    start = time.perf_counter()
    for piece in pieces:
        if feed(piece):
            events += 1
    decoder.close()
    elapsed = time.perf_counter() - start
    assert events > 0
    return elapsed / count


def best_of(times: Iterable[float]) -> float:
    """The least of several runs: what the code costs, with the least of the VM's noise."""
    return min(times)


def linear_time(quick: bool, repeat: int) -> list[str]:
    """Time per piece as the input grows: a ratio near 1 to the smallest size is linear time.

    A decoder that rescanned or recopied what it holds would grow its time per
    piece with the size: a 16 MiB line fed a byte at a time is where it shows.
    """
    classes = CLASSES
    lines = [
        "### Linear time: time per piece as the input grows (ratio to the smallest; 1.0 is linear)",
        "",
        f"Fastest of {repeat} runs each (the VM's noise only ever adds time).",
        "",
    ]
    sizes_mib = (1, 2, 4) if quick else (1, 4, 16)
    for name in SSEKIT:
        cls = classes[name]
        rows = []
        for mib in sizes_mib:
            # One data line of `mib` MiB, a byte per feed(), then the blank line.
            n = mib * MIB

            def pieces(n: int = n) -> Iterable[bytes]:
                return itertools.chain([b"data: "], itertools.repeat(b"x", n), [b"\n", b"\n"])

            rows.append(best_of(per_piece(cls, pieces(), n + 3) for _ in range(repeat)))
        cells = ", ".join(
            f"{mib} MiB {t * 1e9:.0f} ns ({t / rows[0]:.2f})"
            for mib, t in zip(sizes_mib, rows, strict=True)
        )
        lines.append(f"- {name}, one line fed 1 byte at a time: {cells}")
    event = 'data: {"n": 12345, "text": "你好 hello"}\n\n'.encode()
    counts = (10_000, 30_000, 100_000) if not quick else (3_000, 10_000, 30_000)
    for name in SSEKIT:
        cls = classes[name]
        rows = []
        for count in counts:
            chunks = payloads.cut_every(event * count, 7)
            rows.append(best_of(per_piece(cls, chunks, len(chunks)) for _ in range(repeat)))
        cells = ", ".join(
            f"{count:,} events {t * 1e9:.0f} ns ({t / rows[0]:.2f})"
            for count, t in zip(counts, rows, strict=True)
        )
        lines.append(f"- {name}, events in 7-byte pieces: {cells}")
    return [*lines, ""]


def counted(chunks: list[bytes], decoder_class: type) -> tuple[int, int]:
    """Events and data characters: the work eventsource_parser.mjs's callback does."""
    feed = decoder_class().feed
    events = chars = 0
    for chunk in chunks:
        for event in feed(chunk):
            events += 1
            chars += len(event.data)
    return events, chars


def timed_count(chunks: list[bytes], decoder_class: type) -> float:
    gc.collect()
    start = time.perf_counter()
    counted(chunks, decoder_class)
    return time.perf_counter() - start


#: Where eventsource-parser is installed for the Node comparison (nothing is installed for you).
NODE_PREFIX = Path(os.environ.get("SSEKIT_BENCH_NODE", "/tmp/ssekit-bench-node"))
NODE_SCRIPT = Path(__file__).resolve().parent / "eventsource_parser.mjs"


def javascript(
    all_results: list[tuple[payloads.Workload, dict[str, dict[str, object]]]], repeat: int
) -> list[str]:
    """eventsource-parser under Node on the event-per-read workloads, beside ssekit's figures."""
    lines = [
        "### eventsource-parser (JavaScript) under Node, event per read",
        "",
        "Bytes in, events out, as ssekit: each read decoded by Node's StringDecoder (what a",
        "stream with setEncoding('utf8') uses), then parsed, its callback counting events and",
        "data characters; in brackets the parser alone, fed text decoded beforehand. ssekit is",
        "timed here doing the same (`counted`: events and data characters, no tuples built),",
        "medians of the same number of runs (Node's JIT warms up over the first ones).",
        "",
    ]
    package = NODE_PREFIX / "node_modules" / "eventsource-parser"
    node = shutil.which("node")
    if node is None or not package.is_dir():
        lines += [
            f"Not run: needs node and `npm install --prefix {NODE_PREFIX} eventsource-parser@4`"
            " (the figure quoted in issue 24 is about 2 M events/s).",
            "",
        ]
        return lines
    version = json.loads((package / "package.json").read_text())["version"]
    for work, _ in all_results:
        if "event per chunk" not in work.name:
            continue
        with tempfile.NamedTemporaryFile(suffix=".chunks") as file:
            for chunk in work.chunks:
                file.write(len(chunk).to_bytes(4, "big") + chunk)
            file.flush()
            command = [node, str(NODE_SCRIPT), file.name, str(package), str(repeat)]
            out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300)
        got = json.loads(out.stdout)
        chars = sum(len(e.data) for e in work.expected)  # BMP text: JS length agrees
        if (got["events"], got["chars"]) != (len(work.expected), chars):
            lines.append(f"- {work.name}: eventsource-parser {version} WRONG: {got}")
            continue
        theirs = got["events"] / got["seconds"]
        text_only = got["events"] / got["text_seconds"]
        cells = [
            f"eventsource-parser {version} {theirs:,.0f} events/s "
            f"(text decoded beforehand: {text_only:,.0f})"
        ]
        for name in SSEKIT:
            cls = CLASSES[name]
            assert counted(work.chunks, cls) == (len(work.expected), chars)
            seconds = statistics.median(timed_count(work.chunks, cls) for _ in range(repeat))
            ours = len(work.expected) / seconds
            label = name.removeprefix("ssekit ").strip("()")
            cells.append(f"ssekit {label} {ours:,.0f} ({ours / theirs:.2f}x)")
        lines.append(f"- {work.name}: " + "; ".join(cells))
    return [*lines, ""]


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_decoder", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="smaller payloads, 3 repetitions: indicative only"
    )
    parser.add_argument("--repeat", type=int, default=None, help="repetitions (default 7)")
    parser.add_argument(
        "--cassettes",
        nargs="?",
        const=str(payloads.CASSETTES),
        metavar="DIR",
        help="decode recorded streams instead (ssekit proxy --record), cut where they were "
        f"really cut; default DIR: the shipped set, {payloads.CASSETTES.name}/",
    )
    args = parser.parse_args(argv)
    needs.require(parser.prog, needs.DECODER)
    repeat = args.repeat or (3 if args.quick else 7)
    if args.cassettes is not None:
        return recorded(args.cassettes, repeat)
    out = ["## Decoder", ""]
    print("## Decoder\n", flush=True)
    all_results = []
    for work in payloads.build(quick=args.quick):
        results = run_workload(work, repeat)
        all_results.append((work, results))
        section = table(work, results)
        print("\n".join(section), flush=True)
        out += section
    for section in (
        targets(all_results, quick=args.quick),
        javascript(all_results, 15),
        linearity(repeat),
        linear_time(args.quick, 3 if args.quick else 5),
    ):
        print("\n".join(section), flush=True)
        out += section
    return out


def recorded(directory: str, repeat: int) -> list[str]:
    """The decoder table for each recorded stream (no targets: they judge the built-in set)."""
    out = ["## Decoder, recorded streams", ""]
    print("\n".join(out), flush=True)
    for work in payloads.from_cassettes(directory):
        section = table(work, run_workload(work, repeat))
        print("\n".join(section), flush=True)
        out += section
    return out


if __name__ == "__main__":
    main()
