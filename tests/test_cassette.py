"""The cassette format: writing and reading it, bad files, matching, playback, the timeline."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import tracemalloc
from pathlib import Path

import pytest

from ssekit import Event, iter_events
from ssekit._cli import main
from ssekit.cassette import (
    VERSION,
    CassetteError,
    Library,
    Pace,
    Playback,
    Problem,
    chunk_line,
    end_line,
    header_line,
    load,
    render_timeline,
    timeline,
)

BODY = b'{"model": "m", "stream": true}'
CHUNKS = [
    (0.010, b"data: one\n\n"),
    (0.050, b"data: t"),  # cuts an event
    (0.120, b"wo\n\ndata: \xe4\xbd"),  # cuts a character: not UTF-8 on its own
    (0.300, b"\xa0\n\n"),
]


def write(
    path: Path,
    chunks: list[tuple[float, bytes]] = CHUNKS,
    *,
    outcome: str = "complete",
    method: str = "POST",
    target: str = "/v1/chat/completions",
    body: bytes = BODY,
) -> Path:
    lines = [
        header_line(
            method=method,
            target=target,
            request_headers=[(b"content-type", b"application/json")],
            body=body,
            status=200,
            reason="OK",
            response_headers=[(b"content-type", b"text/event-stream")],
            t=0.005,
            recorded_at="2026-12-07T00:00:00.000Z",
        ),
        *(chunk_line(t, data) for t, data in chunks),
        end_line(
            outcome, chunks[-1][0] if chunks else 0.0, len(chunks), sum(len(d) for _, d in chunks)
        ),
    ]
    path.write_bytes(b"".join(lines))
    return path


def test_a_cassette_reads_back_what_was_written(tmp_path: Path) -> None:
    cassette = load(write(tmp_path / "a.jsonl"))
    assert cassette.version == VERSION
    assert cassette.request.method == "POST"
    assert cassette.request.path == "/v1/chat/completions"
    assert cassette.request.body == BODY
    assert cassette.request.headers == (("content-type", "application/json"),)
    assert cassette.response.status == 200
    assert cassette.response.t == 0.005
    assert [(c.t, c.data) for c in cassette.chunks()] == CHUNKS
    assert cassette.end is not None
    assert (cassette.end.outcome, cassette.end.chunks, cassette.end.bytes) == (
        "complete",
        4,
        sum(len(d) for _, d in CHUNKS),
    )


def test_text_chunks_stay_readable_and_others_are_base64(tmp_path: Path) -> None:
    lines = write(tmp_path / "a.jsonl").read_bytes().splitlines()
    chunk_objects = [json.loads(line) for line in lines[1:-1]]
    assert chunk_objects[0] == {"t": 0.01, "data": "data: one\n\n"}
    assert set(chunk_objects[2]) == {"t", "b64"}
    assert json.loads(lines[-1])["end"] == "complete"
    assert json.loads(lines[0])["ssekit_cassette"] == VERSION


def test_a_binary_request_body_is_base64(tmp_path: Path) -> None:
    cassette = load(write(tmp_path / "a.jsonl", body=b"\xff\x00raw"))
    assert cassette.request.body == b"\xff\x00raw"
    assert "body_b64" in json.loads((tmp_path / "a.jsonl").read_bytes().splitlines()[0])["request"]


def damaged(tmp_path: Path, edit: str) -> Path:
    path = write(tmp_path / "bad.jsonl")
    lines = path.read_bytes().splitlines(keepends=True)
    if edit == "no end":
        lines = lines[:-1]
    elif edit == "cut line":
        lines = [*lines[:-1], lines[-1][:10]]
    elif edit == "corrupt":
        lines[2] = b'{"t": 0.05, "data": "da\n'
    elif edit == "future":
        header = json.loads(lines[0])
        header["ssekit_cassette"] = VERSION + 1
        lines[0] = json.dumps(header).encode() + b"\n"
    elif edit == "lost line":
        del lines[2]
    elif edit == "back":
        lines[3] = chunk_line(0.001, b"wo\n\n")
    elif edit == "after end":
        lines.append(chunk_line(1.0, b"data: x\n\n"))
    elif edit == "missing field":
        lines[1] = b'{"data": "x"}\n'
    elif edit == "not a cassette":
        lines[0] = b'{"hello": 1}\n'
    path.write_bytes(b"".join(lines))
    return path


@pytest.mark.parametrize(
    ("edit", "line", "problem"),
    [
        ("no end", 5, Problem.TRUNCATED),
        ("cut line", 6, Problem.TRUNCATED),
        ("corrupt", 3, Problem.NOT_JSON),
        ("future", 1, Problem.FUTURE_VERSION),
        ("lost line", 5, Problem.COUNTS),
        ("back", 4, Problem.TIME_BACK),
        ("after end", 7, Problem.AFTER_END),
        ("missing field", 2, Problem.BAD_FIELD),
        ("not a cassette", 1, Problem.NOT_A_CASSETTE),
    ],
)
def test_a_bad_cassette_is_an_error_naming_file_line_and_problem(
    tmp_path: Path, edit: str, line: int, problem: Problem
) -> None:
    path = damaged(tmp_path, edit)
    with pytest.raises(CassetteError) as caught:
        load(path)
    assert (caught.value.path, caught.value.line, caught.value.problem) == (
        str(path),
        line,
        problem,
    )
    assert isinstance(caught.value, ValueError)


def test_an_empty_file_is_not_a_cassette(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(CassetteError) as caught:
        load(tmp_path / "empty.jsonl")
    assert (caught.value.line, caught.value.problem) == (None, Problem.NOT_A_CASSETTE)


def test_a_large_cassette_is_read_a_line_at_a_time(tmp_path: Path) -> None:
    piece = b"data: " + b"x" * 1000 + b"\n\n"
    chunks = [(i / 1000, piece) for i in range(5000)]  # 5 MB of chunks
    path = write(tmp_path / "big.jsonl", chunks)
    tracemalloc.start()
    try:
        cassette = load(path)
        total = sum(len(piece) for _, piece in Playback(cassette, Pace(speed=None)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 5000 * len(piece)
    assert peak < 512 * 1024


def test_a_directory_is_indexed_lazily_from_header_lines_only(tmp_path: Path) -> None:
    for i in range(300):
        write(tmp_path / f"{i:04d}.jsonl", body=json.dumps({"n": i}).encode())
    # chunk lines of one file corrupted: matching never reads them
    damaged_path = tmp_path / "0007.jsonl"
    lines = damaged_path.read_bytes().splitlines(keepends=True)
    damaged_path.write_bytes(lines[0] + b"garbage\n")
    (tmp_path / "notes.txt").write_text("not a cassette")
    library = Library(tmp_path)
    assert library._index is None  # nothing read yet
    found = library.find("POST", "/v1/chat/completions", b'{"n":7}')
    assert found is not None
    assert found.name == "0007.jsonl"
    assert found.end is None  # its header only
    with pytest.raises(CassetteError) as caught:
        list(found.chunks())
    assert (caught.value.line, caught.value.problem) == (2, Problem.NOT_JSON)
    assert len(library.cassettes) == 300


def test_json_bodies_match_as_data_and_several_matches_take_turns(tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", body=b'{"a": 1, "b": [1, 2]}')
    write(tmp_path / "b.jsonl", body=b'{"b":[1,2],"a":1}')
    write(tmp_path / "c.jsonl", method="GET", target="/v1/models?x=1", body=b"")
    library = Library(tmp_path)
    turns = [
        library.find("POST", "/v1/chat/completions", b'{"b": [1,2], "a": 1}') for _ in range(3)
    ]
    assert [c.name for c in turns if c] == ["a.jsonl", "b.jsonl", "a.jsonl"]
    assert library.find("POST", "/v1/chat/completions", b'{"a": 2}') is None
    assert library.find("GET", "/v1/models?y=2", b"") is not None  # query not matched
    assert Library(tmp_path, ("method", "path", "query")).find("GET", "/v1/models?y=2", b"") is None
    closest = library.closest("GET", "/v1/models", b"{}")
    assert closest[0]["file"] == "c.jsonl"
    assert closest[0]["differs"] == ["body"]
    with pytest.raises(ValueError, match="unknown match keys"):
        Library(tmp_path, ("method", "colour"))


def test_playback_paces_rechunks_and_cuts(tmp_path: Path) -> None:
    cassette = load(write(tmp_path / "a.jsonl"))
    as_recorded = Playback(cassette)
    assert list(as_recorded) == CHUNKS
    assert as_recorded.clean
    twice = list(Playback(cassette, Pace(speed=2)))
    assert [due for due, _ in twice] == [t / 2 for t, _ in CHUNKS]
    assert {due for due, _ in Playback(cassette, Pace(speed=None))} == {0.0}
    ones = list(Playback(cassette, Pace(rechunk="1")))
    assert all(len(piece) == 1 for _, piece in ones)
    assert b"".join(p for _, p in ones) == b"".join(d for _, d in CHUNKS)
    pieces = [p for _, p in Playback(cassette, Pace(rechunk="random", seed=1))]
    assert b"".join(pieces) == b"".join(d for _, d in CHUNKS)
    cut = Playback(cassette, Pace(cut_after=2))
    sent = b"".join(p for _, p in cut)
    assert sent == b"data: one\n\ndata: two\n\n"
    assert not cut.clean
    assert list(iter_events([sent])) == [Event(data="one"), Event(data="two")]
    unfinished = Playback(load(write(tmp_path / "b.jsonl", outcome="upstream_cut")))
    assert len(list(unfinished)) == 4
    assert not unfinished.clean
    with pytest.raises(ValueError, match="speed"):
        Pace(speed=0)


def test_timeline_has_ttfb_events_gaps_cuts_and_end(tmp_path: Path) -> None:
    view = timeline(load(write(tmp_path / "a.jsonl")))
    assert view["ttfb_ms"] == 5.0
    assert [(e["n"], e["offset_ms"], e["gap_ms"], e["data"]) for e in view["events"]] == [
        (1, 10.0, 5.0, "one"),
        (2, 120.0, 110.0, "two"),
        (3, 300.0, 180.0, "你"),
    ]
    assert [(c["chunk"], c["cuts"]) for c in view["cuts"]] == [
        (2, ["event"]),
        (3, ["event", "utf-8"]),
    ]
    assert view["end"] == {
        "outcome": "complete",
        "t_ms": 300.0,
        "chunks": 4,
        "bytes": sum(len(d) for _, d in CHUNKS),
        "unfinished_event": False,
    }


def run_cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        status = main(list(args))
    return status, out.getvalue()


def test_cassette_show_prints_the_timeline_and_json(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl")
    status, text = run_cli("cassette", "show", str(path))
    assert status == 0
    lines = text.splitlines()
    assert len(lines) == 4 + 3 + 2 + 1  # head, 3 events, 2 cuts, end
    status, data = run_cli("cassette", "show", str(path), "--json")
    assert status == 0
    assert json.loads(data) == json.loads(json.dumps(timeline(load(path)), ensure_ascii=False))
    status, _ = run_cli("cassette", "show", str(damaged(tmp_path, "no end")))
    assert status == 1


def test_the_shipped_benchmark_cassettes_are_irregular_real_cuts() -> None:
    from benchmarks import payloads

    works = payloads.from_cassettes(payloads.CASSETTES)
    assert len(works) == 3
    for work in works:
        assert work.expected == list(iter_events(work.chunks))
        assert len(work.expected) >= 10
    cassettes = [load(p) for p in sorted(payloads.CASSETTES.glob("*.jsonl"))]
    for cassette in cassettes:
        times = [c.t for c in cassette.chunks()]
        gaps = {round(b - a, 3) for a, b in itertools.pairwise(times)}
        assert len(gaps) > 3  # irregular
        assert any(cut["cuts"] for cut in timeline(cassette)["cuts"])  # events really split
    ends = {c.name: c.read_end().outcome for c in cassettes}
    assert ends == {
        "mock-chat-coalesced.jsonl": "complete",
        "mock-chat-small-reads.jsonl": "complete",
        "mock-events-cut.jsonl": "upstream_cut",
    }


def test_the_readme_shows_what_cassette_show_prints() -> None:
    from benchmarks import payloads

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Record and replay", 1)[1]
    shown = section.split("\n```\n", 3)[2]  # the block after the python example
    path = payloads.CASSETTES / "mock-events-cut.jsonl"
    printed = render_timeline(timeline(load(path)))
    assert shown.splitlines()[1:] == printed.splitlines()[1:]  # the file's path aside
