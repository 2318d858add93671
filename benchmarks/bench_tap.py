"""What reading usage costs the proxy's tap, per event, in one process (issue 21).

The proxy's tap decodes every forwarded event; the usage meter reads the decoded events.
This times ``Tap.feed`` over realistic OpenAI chat chunks, one event per chunk as
providers send them, without a meter (as before issue 21, and as every path that is not
an LLM API), with the Chat Completions meter, and with it on chunks carrying
``"usage": null`` (what ``include_usage`` makes providers send) plus the final usage
chunk; also the Responses and Anthropic shapes. Medians of repeated runs, CPU time
(``time.process_time``), nanoseconds per event.

    python -m benchmarks.bench_tap            # --quick: fewer events and repetitions
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from benchmarks import needs

if TYPE_CHECKING:
    from ssekit.proxy._stats import StreamStats
    from ssekit.proxy._usage import Shape


def with_usage_null(events: list[bytes]) -> list[bytes]:
    """The chunks as with include_usage: ``"usage": null`` on each, a usage chunk last."""
    out = []
    for raw in events[:-1]:
        chunk = json.loads(raw[6:])
        chunk["usage"] = None
        out.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    last = {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": len(out)}}
    out.append(b"data: " + json.dumps(last).encode() + b"\n\n")
    return [*out, events[-1]]


def responses_events(n: int, rnd: random.Random) -> list[bytes]:
    from benchmarks.payloads import EN

    out = []
    for i in range(n):
        data = {"type": "response.output_text.delta", "sequence_number": i, "item_id": "msg_1",
                "output_index": 0, "content_index": 0, "delta": " " + rnd.choice(EN)}  # fmt: skip
        out.append(
            b"event: response.output_text.delta\ndata: " + json.dumps(data).encode() + b"\n\n"
        )
    done = {"type": "response.completed", "response": {"model": "m", "usage": {"input_tokens": 1}}}
    out.append(b"event: response.completed\ndata: " + json.dumps(done).encode() + b"\n\n")
    return out


def messages_events(n: int, rnd: random.Random) -> list[bytes]:
    from benchmarks.payloads import EN

    start = {"type": "message_start", "message": {"model": "c", "usage": {"input_tokens": 5}}}
    out = [b"event: message_start\ndata: " + json.dumps(start).encode() + b"\n\n"]
    for _ in range(n):
        data = {"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": " " + rnd.choice(EN)}}  # fmt: skip
        out.append(b"event: content_block_delta\ndata: " + json.dumps(data).encode() + b"\n\n")
    end = {"type": "message_delta", "usage": {"output_tokens": n}}
    out.append(b"event: message_delta\ndata: " + json.dumps(end).encode() + b"\n\n")
    return out


def run(events: list[bytes], shape: Shape | None) -> tuple[float, StreamStats]:
    """CPU seconds to feed ``events``, one per chunk, through a fresh tap."""
    from ssekit.proxy._pump import Tap
    from ssekit.proxy._stats import StreamStats
    from ssekit.proxy._usage import Meter

    stats = StreamStats(shape=shape)
    meter = None if shape is None else Meter(shape, stats, 0.0, time.monotonic)
    tap = Tap(stats, 0.0, None, meter)
    feed = tap.feed
    start = time.process_time()
    for chunk in events:
        feed(chunk)
    return time.process_time() - start, stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_tap", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    needs.require(parser.prog, needs.PROXY)
    from benchmarks.payloads import EN, SEED, openai_events
    from ssekit.proxy._usage import Shape, UsageSource

    n, repeat = (2000, 5) if args.quick else (20000, 15)
    rnd = random.Random(SEED)
    chat = openai_events(n, EN, rnd)
    cases: list[tuple[str, list[bytes], Shape | None, Callable[[StreamStats], bool]]] = [
        ("chat chunks, no meter (before)", chat, None, lambda s: s.events == n + 1),
        ("chat chunks, chat meter", chat, Shape.CHAT, lambda s: s.first_token is not None),
        ("chat chunks with usage null, no meter", with_usage_null(chat), None,
         lambda s: s.events == n + 2),
        ("chat chunks with usage null, chat meter", with_usage_null(chat), Shape.CHAT,
         lambda s: s.usage is UsageSource.REPORTED and s.completion_tokens == n),
        ("responses events, no meter", responses_events(n, rnd), None, lambda s: s.events == n + 1),
        ("responses events, responses meter", responses_events(n, rnd), Shape.RESPONSES,
         lambda s: s.usage is UsageSource.REPORTED),
        ("anthropic events, no meter", messages_events(n, rnd), None, lambda s: s.events == n + 2),
        ("anthropic events, messages meter", messages_events(n, rnd), Shape.MESSAGES,
         lambda s: s.completion_tokens == n),
    ]  # fmt: skip
    print("| tap workload | ns per event (CPU, median) |")
    print("|---|---:|")
    for name, events, shape, check in cases:
        _, stats = run(events, shape)
        assert check(stats), name  # the meter read what it should before it is timed
        times = [run(events, shape)[0] for _ in range(repeat)]
        print(f"| {name} | {statistics.median(times) / len(events) * 1e9:,.0f} |")


if __name__ == "__main__":
    main()
