"""Seeded, realistic event streams and the ways they are cut into chunks."""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ssekit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import oracle  # tests/oracle.py: the spec's algorithm over the whole input

SEED = 20261122
#: The shipped recorded streams (python -m benchmarks.record_cassettes writes them).
CASSETTES = Path(__file__).resolve().parent / "cassettes"
EN = "The quick brown fox jumps over the lazy dog while streaming tokens one by one".split()
ZH = list("流式输出让用户立刻看到回答的第一个字而不是等待整段文本生成完毕再显示出来")


@dataclass(frozen=True)
class Workload:
    name: str
    chunks: list[bytes]
    expected: list[ssekit.Event]

    @property
    def size(self) -> int:
        return sum(map(len, self.chunks))


def openai_events(n: int, words: list[str], rnd: random.Random) -> list[bytes]:
    """One wire event per chat.completion.chunk, then [DONE]."""
    out = []
    for i in range(n):
        token = (" " if words is EN else "") + rnd.choice(words)
        chunk = {
            "id": "chatcmpl-9zXq1",
            "object": "chat.completion.chunk",
            "created": 1763800000,
            "model": "gpt-4o-mini",
            "system_fingerprint": "fp_0ba0d124f1",
            "choices": [
                {"index": 0, "delta": {"content": token}, "logprobs": None, "finish_reason": None}
            ],
        }
        if i == 0:
            chunk["choices"][0]["delta"] = {"role": "assistant", "content": ""}  # type: ignore[index]
        out.append(b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


def cut_random(data: bytes, rnd: random.Random, low: int = 1, high: int = 4096) -> list[bytes]:
    chunks, i = [], 0
    while i < len(data):
        n = rnd.randint(low, high)
        chunks.append(data[i : i + n])
        i += n
    return chunks


def cut_every(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def expected_of(data: bytes) -> list[ssekit.Event]:
    # The reference is the spec's algorithm transcribed (tests/oracle.py), not
    # ssekit: a decoder under test must never be its own judge.
    return oracle.parse(data).events


def build(quick: bool = False) -> list[Workload]:
    rnd = random.Random(SEED)
    scale = 4 if quick else 1
    en = openai_events(4000 // scale, EN, rnd)
    zh = openai_events(4000 // scale, ZH, rnd)
    en_wire, zh_wire = b"".join(en), b"".join(zh)
    crlf_wire = en_wire.replace(b"\n", b"\r\n")
    big_line = "x" * 64
    large = b"".join(
        ssekit.encode(ssekit.Event(data="\n".join(f"{i:04d}{big_line}" for i in range(1000))))
        for _ in range(40 // scale)
    )
    tiny = b"data: x\n\n" * (40000 // scale)
    blocks = [
        b": ping\n\n" * (i % 7 == 0)
        + ssekit.encode(ssekit.Event(data=json.dumps({"n": i, "text": "你好 hello"}),
                                     event="delta", id=str(i)))
        for i in range(4000 // scale)
    ]  # fmt: skip
    mixed = b"".join(blocks)
    mixed_crlf = mixed.replace(b"\n", b"\r\n")
    cr_only = en_wire.replace(b"\n", b"\r")
    one_byte = b"".join(zh[: 300 // scale])

    def w(name: str, data: bytes, cut: Callable[[bytes], list[bytes]]) -> Workload:
        return Workload(name, cut(data), expected_of(data))

    return [
        Workload("openai-en, event per chunk", en, expected_of(en_wire)),
        Workload("openai-zh, event per chunk", zh, expected_of(zh_wire)),
        w("openai-en, random 1-4096 B", en_wire, lambda d: cut_random(d, rnd)),
        w("openai-zh, random 1-4096 B", zh_wire, lambda d: cut_random(d, rnd)),
        w("openai-zh, 7 B cuts", zh_wire, lambda d: cut_every(d, 7)),
        w("openai-zh, 1 B cuts", one_byte, lambda d: cut_every(d, 1)),
        w("openai-en CRLF, 1460 B cuts", crlf_wire, lambda d: cut_every(d, 1460)),
        w("openai-en CR only, 1460 B cuts", cr_only, lambda d: cut_every(d, 1460)),
        w("large 64 KiB events, 16384 B cuts", large, lambda d: cut_every(d, 16384)),
        w("tiny events, 1460 B cuts", tiny, lambda d: cut_every(d, 1460)),
        w("id/event/heartbeats, random", mixed, lambda d: cut_random(d, rnd)),
        # The shapes issue 9 measured: CRLF pairs straddling random reads, and
        # field-heavy blocks one per read or CRLF at random reads.
        w("openai-en CRLF, random 1-4096 B", crlf_wire, lambda d: cut_random(d, rnd)),
        Workload("id/event/heartbeats, block per read", blocks, expected_of(mixed)),
        w("id/event/heartbeats CRLF, random", mixed_crlf, lambda d: cut_random(d, rnd)),
    ]


def from_cassettes(directory: str | Path) -> list[Workload]:
    """One workload per cassette in ``directory`` (or the one file): its body chunks cut
    where they really were, the events the oracle finds in them."""
    from ssekit.cassette import load

    path = Path(directory)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    out = []
    for file in files:
        cassette = load(file)
        chunks = [chunk.data for chunk in cassette.chunks()]
        name = f"cassette {file.stem}, as recorded"
        out.append(Workload(name, chunks, expected_of(b"".join(chunks))))
    return out


def scaling(sizes_kib: tuple[int, ...] = (16, 64, 256)) -> list[Workload]:
    """Streams of events of growing size, for the linearity check."""
    out = []
    for kib in sizes_kib:
        lines = kib * 1024 // 64
        event = ssekit.encode(ssekit.Event(data="\n".join("y" * 63 for _ in range(lines))))
        data = event * max(1, 2048 // kib)
        out.append(Workload(f"{kib} KiB events", cut_every(data, 16384), expected_of(data)))
    return out
