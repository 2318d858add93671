"""Encoder throughput: ssekit.encode against sse-starlette's ServerSentEvent.encode.

    python -m benchmarks.bench_encoder [--quick]   # pip install -e '.[bench]'

Both outputs are decoded first (with the spec-exact decoder) and must give the
event back; an encoder that changes the data is reported WRONG, not timed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import ssekit
from benchmarks import needs
from benchmarks.targets import ENCODER_VS_SSE_STARLETTE, QUICK_NOTE, verdict


def ssekit_build(data: str) -> Callable[[], bytes]:
    event = ssekit.Event(data=data)
    return lambda: ssekit.encode(event)


def starlette_build(data: str) -> Callable[[], bytes]:
    from sse_starlette import ServerSentEvent

    event = ServerSentEvent(data=data)
    return event.encode


def ssekit_build_and_encode(data: str) -> Callable[[], bytes]:
    return lambda: ssekit.encode(ssekit.Event(data=data))


def starlette_build_and_encode(data: str) -> Callable[[], bytes]:
    from sse_starlette import ServerSentEvent

    return lambda: ServerSentEvent(data=data).encode()


# "encode": the event object exists, time the encoding alone (the encoder's job);
# "build+encode": construct the event object too, as a handler writing fresh events does.
MODES: dict[str, dict[str, Callable[[str], Callable[[], bytes]]]] = {
    "encode": {"ssekit": ssekit_build, "sse-starlette": starlette_build},
    "build+encode": {
        "ssekit": ssekit_build_and_encode,
        "sse-starlette": starlette_build_and_encode,
    },
}
TEXT = '{"choices":[{"index":0,"delta":{"content":"你好 hello"}}]}'
CASES = {
    "plain JSON chunk": TEXT,
    "data with \\n": "line one\nline two\nline three",
    "data with \\r\\n": "line one\r\nline two\r\nline three",
    "data with lone \\r": "line one\rline two\rline three",
}


def check(encode: Callable[[], bytes], data: str) -> str | None:
    events = ssekit.Decoder().feed(encode())
    want = data.replace("\r\n", "\n").replace("\r", "\n")
    return None if events == [ssekit.Event(data=want)] else f"decodes to {events!r}"[:80]


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_encoder", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="5,000 events, 3 repetitions: indicative only"
    )
    args = parser.parse_args(argv)
    needs.require(parser.prog, needs.ENCODER)
    n, repeat = (5_000, 3) if args.quick else (50_000, 7)
    out = [
        "## Encoder",
        "",
        f"{n:,} events per run, median of {repeat}.",
        "",
        "| case | mode | encoder | events/s | ssekit speed-up |",
        "|---|---|---|---:|---:|",
    ]
    verdicts = []
    for case, data in CASES.items():
        for mode, encoders in MODES.items():
            calls = {name: build(data) for name, build in encoders.items()}
            samples: dict[str, list[float]] = {}
            for name, call in calls.items():
                reason = check(call, data)
                if reason is not None:
                    out.append(f"| {case} | {mode} | {name} | WRONG: {reason} | |")
                else:
                    samples[name] = []
            for _ in range(repeat):
                for name in samples:  # interleaved
                    call = calls[name]
                    start = time.perf_counter()
                    for _ in range(n):
                        call()
                    samples[name].append(time.perf_counter() - start)
            base = statistics.median(samples["ssekit"])
            for name, times in samples.items():
                median = statistics.median(times)
                out.append(
                    f"| {case} | {mode} | {name} | {n / median:,.0f} | {median / base:.2f}x |"
                )
            if "sse-starlette" in samples:
                ratio = statistics.median(samples["sse-starlette"]) / base
                target = ENCODER_VS_SSE_STARLETTE
                verdicts.append(
                    f"- {case}, {mode}: {ratio:.2f}x sse-starlette "
                    + verdict(ratio >= target, f">= {target:g}x", quick=args.quick)
                )
    out += ["", "### Targets", "", *([QUICK_NOTE, ""] if args.quick else []), *verdicts, ""]
    print("\n".join(out), flush=True)
    return out


if __name__ == "__main__":
    main()
