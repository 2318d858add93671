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
import statistics
import time
import tracemalloc

from benchmarks import needs, payloads
from benchmarks.peers import PEERS, Peer, check
from benchmarks.targets import (
    DECODER_VS_FASTEST,
    DECODER_VS_HTTPX_SSE,
    LARGE_EVENTS_VS_HTTPX_SSE,
    QUICK_NOTE,
    verdict,
)


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
    base = results["ssekit"]["seconds"]
    assert isinstance(base, float)
    lines = [
        f"### {work.name} ({len(work.expected)} events, {work.size / 1e6:.2f} MB, "
        f"{len(work.chunks)} chunks)",
        "",
        "| decoder | events/s | MB/s | ssekit speed-up | peak KiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        if r["wrong"] is not None:
            lines.append(f"| {name} | WRONG: {r['wrong']} | | | |")
            continue
        seconds = r["seconds"]
        assert isinstance(seconds, float)
        lines.append(
            f"| {name} | {r['events_per_s']:,.0f} | {r['mb_per_s']:.1f} | "
            f"{seconds / base:.2f}x | {r['peak_kib']:,.0f} |"
        )
    return [*lines, ""]


def targets(
    all_results: list[tuple[payloads.Workload, dict[str, dict[str, object]]]],
    *,
    quick: bool = False,
) -> list[str]:
    lines = ["### Targets", "", *([QUICK_NOTE, ""] if quick else [])]

    def judged(ratio: float, target: float) -> str:
        return verdict(ratio >= target, f">= {target:g}x", quick=quick)

    for work, results in all_results:
        base = results["ssekit"]["seconds"]
        assert isinstance(base, float)
        peers = {
            n: r["seconds"] for n, r in results.items() if n != "ssekit" and r["wrong"] is None
        }
        if not peers:
            continue
        fastest = min(peers, key=lambda n: peers[n])  # type: ignore[arg-type,return-value]
        ratio = peers[fastest] / base  # type: ignore[operator]
        line = (
            f"- {work.name}: {ratio:.2f}x the fastest correct peer ({fastest}) "
            f"{judged(ratio, DECODER_VS_FASTEST)}"
        )
        if "httpx-sse" in peers and work.name.startswith("openai"):
            hx = peers["httpx-sse"] / base  # type: ignore[operator]
            line += f"; {hx:.2f}x httpx-sse {judged(hx, DECODER_VS_HTTPX_SSE)}"
        if work.name.startswith("large") and "httpx-sse" in peers:
            hx = peers["httpx-sse"] / base  # type: ignore[operator]
            line += f"; {hx:.2f}x httpx-sse MB/s {judged(hx, LARGE_EVENTS_VS_HTTPX_SSE)}"
        lines.append(line)
    return [*lines, ""]


def linearity(repeat: int) -> list[str]:
    lines = ["### ssekit MB/s by event size (linear: flat MB/s)", ""]
    for work in payloads.scaling():
        peer = PEERS["ssekit"]
        assert check(peer, work.chunks, work.expected) is None
        median = statistics.median(timed(peer, work.chunks) for _ in range(repeat))
        lines.append(f"- {work.name}: {work.size / median / 1e6:.1f} MB/s")
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
    for section in (targets(all_results, quick=args.quick), linearity(repeat)):
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
