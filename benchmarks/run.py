"""Run every decoder and encoder benchmark and the integrations, and print the tables
(Markdown), the machine and package versions first.

    pip install -e '.[bench]'           # once, from the repository root: ssekit and its peers
    python -m benchmarks.run            # full run (a few minutes)
    python -m benchmarks.run --quick    # about 30 s: a smoke run, its figures indicative only
    python -m benchmarks.run --cassettes [DIR]   # the decoder on recorded streams

The proxy has its own command: python -m benchmarks.bench_proxy [--quick].
"""

from __future__ import annotations

import argparse
import os
import platform
from importlib.metadata import version

from benchmarks import bench_decoder, bench_encoder, bench_integrations, needs

#: Every package whose version the tables depend on.
PACKAGES = tuple(dict.fromkeys((*needs.DECODER, *needs.ENCODER, *needs.INTEGRATIONS)))


def machine() -> list[str]:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    versions = ", ".join(f"{p} {version(p)}" for p in PACKAGES)
    return [
        f"Machine: {cpu}, {os.cpu_count()} cores; Python {platform.python_version()}",
        f"Packages: {versions}",
        "",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller payloads, fewer repetitions: indicative figures, no PASS or FAIL",
    )
    parser.add_argument("--repeat", type=int, help="decoder repetitions (default 7, quick 3)")
    parser.add_argument(
        "--cassettes",
        nargs="?",
        const="",
        metavar="DIR",
        help="only the decoder benchmark, on recorded streams (cassettes of ssekit proxy "
        "--record), cut where they were really cut; default DIR: benchmarks/cassettes/",
    )
    args = parser.parse_args(argv)
    needs.require(parser.prog, PACKAGES)
    print("\n".join(machine()))
    quick = ["--quick"] if args.quick else []
    if args.cassettes is not None:
        recorded = ["--cassettes", *([args.cassettes] if args.cassettes else [])]
        repeat = ["--repeat", str(args.repeat)] if args.repeat else []
        bench_decoder.main([*quick, *repeat, *recorded])
        return
    bench_decoder.main([*quick, *(["--repeat", str(args.repeat)] if args.repeat else [])])
    bench_encoder.main(quick)
    bench_integrations.main(quick)


if __name__ == "__main__":
    main()
