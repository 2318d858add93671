"""Fuzz the decoder: split invariance, agreement with the spec oracle, bounded errors.

    python fuzz/decode.py --replay                 # replay fuzz/corpus/ only
    python fuzz/decode.py --replay --seconds 5     # replay, then a seeded mutation loop (CI)
    python fuzz/decode.py --seconds 3600           # an hour of mutation
    python fuzz/decode.py --atheris                # coverage-guided, when atheris is installed
    python fuzz/decode.py --impl pure|compiled|both   # which Decoder (default: both if built)

With both, each is held to the oracle and to the other: the same pieces fed to each must
give the same items, state and errors call by call.

Exits non-zero on the first failure and saves the input to fuzz/corpus/crash-<sha>.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests"))

from oracle import parse  # noqa: E402

import ssekit  # noqa: E402
from ssekit import DEFAULT_MAX_EVENT_SIZE  # noqa: E402
from ssekit._decoder import PureDecoder  # noqa: E402

try:
    from ssekit._compiled import Decoder as CompiledDecoder
except ImportError:  # not built
    CompiledDecoder = None  # type: ignore[assignment,misc]

CORPUS = ROOT / "corpus"
LIMIT = 64  # a small bound, so the limit paths are exercised too
TOKENS = [
    b"data",
    b"event",
    b"id",
    b"retry",
    b":",
    b" ",
    b"\n",
    b"\r",
    b"\r\n",
    b"\xef\xbb\xbf",
    b"\xe4\xbd\xa0",
    b"\xf0\x9f\x98\x80",
    b"\x00",
    b"[DONE]",
    b"123",
    b"+1",
    # Long values: a retry past Python's 4300-digit int() limit and past 2**64.
    b"retry: " + b"9" * 4301 + b"\n",
    b"retry: 18446744073709551616\n",
    b"0" * 5000,
    b"x" * 5000,
    # Lines past the 64-byte bound the decoder drops (comments, unknown fields).
    b":" + b"c" * 100,
    b"foo: " + b"v" * 100,
]
MAX_INPUT = 64 * 1024  # past 4 KiB, so long lines and values survive mutation


def cuts_from(data: bytes) -> list[int]:
    """Cut points derived from the input itself, so a crash replays exactly."""
    seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "big")
    rnd = random.Random(seed)
    return sorted(rnd.sample(range(len(data) + 1), min(len(data) + 1, rnd.randint(0, 8))))


def run(
    data: bytes,
    max_event_size: int | None = None,
    comments: bool = True,
    decoder_class: type = PureDecoder,
) -> tuple[object, ...]:
    """What the decoder gives whole, byte by byte and at input-derived cuts.

    Each result is (items, last event ID, reconnection time), or on
    LimitExceeded ("LimitExceeded", its limit, everything decoded before it).
    """
    kwargs = {} if max_event_size is None else {"max_event_size": max_event_size}
    bound = DEFAULT_MAX_EVENT_SIZE if max_event_size is None else max_event_size
    results: list[object] = []
    for cuts in ([], list(range(1, len(data))), cuts_from(data)):
        decoder = decoder_class(comments=comments, **kwargs)
        items: list[object] = []
        bounds = [0, *cuts, len(data)]
        try:
            for start, end in itertools.pairwise(bounds):
                items.extend(decoder.feed(data[start:end]))
                # White-box: what the decoder holds between feeds stays bounded.
                assert len(decoder._line) <= bound, "partial line over the bound"
                assert decoder._data_size <= bound, "data buffer over the bound"
            decoder.close()
            results.append((items, decoder.last_event_id, decoder.retry))
        except ssekit.LimitExceeded as exc:
            results.append(("LimitExceeded", exc.limit, [*items, *exc.events]))
    return tuple(results)


def expected(data: bytes, max_event_size: int | None = None, comments: bool = True) -> object:
    outcome = parse(data, max_event_size=max_event_size, comments=comments)
    if outcome.error is not None:
        return ("LimitExceeded", outcome.error, outcome.items)
    return (outcome.items, outcome.last_event_id, outcome.reconnection_time)


def outcome(decoder: Any, call: Callable[[], list[Any]]) -> tuple[object, ...]:
    """One call's items, or its error's type and attributes, and the state after it."""
    try:
        result: tuple[object, ...] = ("items", [(type(i), i) for i in call()])
    except ssekit.LimitExceeded as exc:
        events = [(type(i), i) for i in exc.events]
        result = ("LimitExceeded", exc.limit, exc.size, exc.maximum, exc.setting, events)
    except ssekit.StateError as exc:
        result = ("StateError", type(exc.__cause__))
    # All it holds, as copy and pickle see it (the same state for both implementations).
    slots = decoder.__getstate__()[1]
    held = (bytes(decoder._line), decoder._data_size, slots) if result[0] == "items" else ()
    state = (decoder.last_event_id, decoder.retry, decoder.closed, decoder.at_boundary)
    return result, state, held


def differential(data: bytes, max_event_size: int | None = None, comments: bool = True) -> None:
    """The pure and the compiled decoder fed the same pieces agree call by call."""
    kwargs = {} if max_event_size is None else {"max_event_size": max_event_size}
    for cuts in (list(range(1, len(data))), cuts_from(data)):
        pair = [
            PureDecoder(comments=comments, **kwargs),
            CompiledDecoder(comments=comments, **kwargs),
        ]
        bounds = [0, *cuts, len(data)]
        for start, end in itertools.pairwise(bounds):
            piece = data[start:end]
            pure, compiled = (outcome(d, lambda d=d, p=piece: d.feed(p)) for d in pair)
            assert pure == compiled, f"the two decoders differ at byte {start}"
        pure, compiled = (outcome(d, d.close) for d in pair)
        assert pure == compiled, "the two decoders differ at close()"


def check(data: bytes, impls: tuple[type, ...] = (PureDecoder,)) -> None:
    """Raise AssertionError when any invariant fails for ``data``, for each implementation."""
    for impl in impls:
        whole, bytewise, cut = run(data, decoder_class=impl)
        assert whole == bytewise == cut, f"split invariance ({impl.__module__})"
        assert whole == expected(data), f"oracle ({impl.__module__})"
        for comments in (True, False):
            whole, bytewise, cut = run(data, LIMIT, comments, impl)
            assert whole == bytewise == cut, f"split invariance with a limit, {comments=}"
            assert whole == expected(data, LIMIT, comments), f"oracle with a limit, {comments=}"
    if len(impls) == 2:
        differential(data)
        for comments in (True, False):
            differential(data, LIMIT, comments)


def mutate(rnd: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(4)
        pos = rnd.randint(0, len(buf))
        if op == 0:
            buf[pos:pos] = rnd.choice(TOKENS)
        elif op == 1 and buf:
            del buf[pos : pos + rnd.randint(1, 8)]
        elif op == 2:
            buf[pos:pos] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 4)))
        else:
            buf[pos:pos] = buf[: rnd.randint(0, 16)]
    return bytes(buf[:MAX_INPUT])


def save_crash(data: bytes) -> Path:
    path = CORPUS / f"crash-{hashlib.sha256(data).hexdigest()[:16]}"
    path.write_bytes(data)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--replay", action="store_true", help="replay fuzz/corpus/ first")
    parser.add_argument("--seconds", type=float, default=0, help="mutation loop time box")
    parser.add_argument("--seed", type=int, default=20261122, help="mutation loop seed")
    parser.add_argument("--atheris", action="store_true", help="run atheris (coverage-guided)")
    parser.add_argument(
        "--impl",
        choices=("pure", "compiled", "both"),
        default="both" if CompiledDecoder is not None else "pure",
        help="the Decoder(s) to fuzz (default: both when the compiled one is built)",
    )
    args = parser.parse_args()
    if args.impl != "pure" and CompiledDecoder is None:
        parser.error("the compiled decoder is not built (no C compiler when ssekit was installed)")
    impls: tuple[type, ...] = {
        "pure": (PureDecoder,),
        "compiled": (CompiledDecoder,),
        "both": (PureDecoder, CompiledDecoder),
    }[args.impl]
    print(f"decoders: {args.impl}")

    seeds = sorted(CORPUS.iterdir())
    if args.replay:
        for path in seeds:
            try:
                check(path.read_bytes(), impls)
            except Exception as exc:  # an assertion, or anything the decoder raised
                print(f"FAIL replaying {path.name}: {exc}", file=sys.stderr)
                return 1
        print(f"replayed {len(seeds)} corpus files: ok")

    if args.atheris:
        import atheris  # type: ignore[import-not-found]

        atheris.Setup([sys.argv[0], str(CORPUS)], lambda data: check(data, impls))
        atheris.Fuzz()
        return 0

    rnd = random.Random(args.seed)
    pool = [p.read_bytes() for p in seeds] or [b"data: x\n\n"]
    deadline = time.monotonic() + args.seconds
    report = time.monotonic() + 300  # a long run says how far it got, every five minutes
    runs = 0
    while time.monotonic() < deadline:
        if time.monotonic() >= report:
            print(f"  {runs} inputs so far", flush=True)
            report += 300
        data = mutate(rnd, rnd.choice(pool))
        try:
            check(data, impls)
        except Exception as exc:  # an assertion, or anything the decoder raised
            print(f"FAIL ({exc!r}); saved {save_crash(data)}", file=sys.stderr)
            return 1
        runs += 1
        if runs % 50 == 0:
            pool.append(data)
    if args.seconds:
        print(
            f"mutation loop: {runs} inputs in {args.seconds:g}s, seed {args.seed}, "
            f"decoders {args.impl}: ok"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
