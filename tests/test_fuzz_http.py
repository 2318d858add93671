"""The HTTP framing fuzzer (``fuzz/http.py``) can fail: planted disagreements are findings.

A harness that never reports anything looks the same as one that cannot; these tests
plant a reading that differs from the oracles' (a body read otherwise, a message
accepted that both refuse, a verdict that changes with the cut) and check that each
is a finding, that agreement and a deliberate strictness are not, and that clean
corpus files replay clean at every cut.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"


def _load() -> ModuleType:
    # Loaded by path under another name: "http" is the standard library's.
    spec = importlib.util.spec_from_file_location("fuzz_http", FUZZ / "http.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


harness = _load()

POST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n"
)
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def _readings(target: str, data: bytes) -> tuple[object, dict[str, object]]:
    ours = harness.ssekit_readings(target, data, [[]])[0]
    oracles = {name: read(data) for name, read in harness.ORACLES[target].items()}
    return ours, oracles


def _with_body(reading: object, index: int, body: bytes) -> object:
    messages = list(reading.messages)  # type: ignore[attr-defined]
    messages[index] = dataclasses.replace(messages[index], body=body)
    return dataclasses.replace(reading, messages=tuple(messages))


def test_all_three_sides_read_a_plain_pipelined_post_alike() -> None:
    ours, oracles = _readings("request", POST)
    assert [m.body for m in ours.messages] == [b"hello", b""]  # type: ignore[attr-defined]
    outcome = harness.judge("request", POST, [ours], oracles)
    assert outcome.findings == []
    assert outcome.stricter == []


def test_a_body_read_otherwise_than_the_oracles_is_a_finding() -> None:
    ours, oracles = _readings("request", POST)
    planted = _with_body(ours, 0, b"hell")
    outcome = harness.judge("request", POST, [planted], oracles)
    assert {f.detail for f in outcome.findings} == {"vs h11: body", "vs llhttp: body"}
    assert {f.kind for f in outcome.findings} == {"reads differently"}


def test_one_message_where_the_oracles_read_two_is_a_finding() -> None:
    ours, oracles = _readings("request", POST)
    planted = dataclasses.replace(ours, messages=ours.messages[:1])  # type: ignore[attr-defined]
    outcome = harness.judge("request", POST, [planted], oracles)
    assert "vs h11: message boundary" in {f.detail for f in outcome.findings}


def test_accepting_what_both_oracles_refuse_is_a_finding() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
    _, oracles = _readings("response", data)
    assert {r.verdict for r in oracles.values()} == {harness.REFUSED}  # type: ignore[attr-defined]
    start = (200, b"1.1")
    accepted = harness.Reading(
        (harness.Message(start, ((b"content-length", b"5"),), b"hello", None, True),),
        harness.ACCEPTED,
    )
    outcome = harness.judge("response", data, [accepted], oracles)
    assert [f.kind for f in outcome.findings] == ["accepts what both refuse"]


def test_a_reading_that_changes_with_the_cut_is_a_finding() -> None:
    ours, oracles = _readings("response", RESPONSE)
    cut = dataclasses.replace(ours, messages=(), verdict=harness.INCOMPLETE)
    outcome = harness.judge("response", RESPONSE, [ours, cut], oracles)
    assert [f.kind for f in outcome.findings] == ["split"]


def test_refusing_what_the_oracles_accept_is_tallied_not_a_finding() -> None:
    _, oracles = _readings("response", RESPONSE)
    refused = harness.Reading((), harness.REFUSED, "bad chunk size line b'x'")
    outcome = harness.judge("response", RESPONSE, [refused], oracles)
    assert outcome.findings == []
    assert {category for _, category, _ in outcome.stricter} == {"chunk-size-line"}


def test_a_planted_finding_fails_the_run_and_a_known_one_does_not(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ours, oracles = _readings("request", POST)
    outcome = harness.judge("request", POST, [_with_body(ours, 0, b"hell")], oracles)
    run = harness.Run({f.family for f in outcome.findings}, tmp_path)
    run.take("request", POST, outcome, every=True)
    assert not run.failed
    run = harness.Run(set(), tmp_path)
    run.take("request", POST, outcome, every=True)
    assert run.failed
    assert "FINDING reads differently [request] vs h11: body" in capsys.readouterr().out
    assert len(list(tmp_path.iterdir())) == 1  # the input, saved once


@pytest.mark.parametrize(
    "name", ["req-openai-chat-post", "req-pipelined-gets", "resp-sse-chunked", "resp-1xx-then-200"]
)
def test_clean_corpus_files_replay_clean_at_every_cut(name: str) -> None:
    path = harness.CORPUS / name
    outcome = harness.check(harness.target_of(path), path.read_bytes(), exhaustive=True)
    assert outcome.findings == []


def test_each_known_bug_file_still_finds_its_bug() -> None:
    """A fixed bug must leave KNOWN_BUGS: a stale entry would hide its return."""
    stale = []
    for name in sorted(harness.KNOWN_BUGS):
        path = harness.CORPUS / name
        outcome = harness.check(harness.target_of(path), path.read_bytes(), exhaustive=True)
        if not outcome.findings:
            stale.append(name)
    assert stale == []


# The bugs issue 18 found (its rows a, b, j, l and the "funky chunks" family), listed in
# KNOWN_BUGS until they were fixed: each now replays clean at every cut.
FIXED = [
    "req-a-trailer-lf-lf-desync",
    "req-trailer-lf-then-request-line",
    "resp-funky-trailer-lf-lf",
    "resp-j-chunked-last-lf",
    "req-b-trailer-nul",
    "req-b-trailer-transfer-encoding",
    "req-funky-trailer-no-colon",
    "resp-trailer-no-colon",
    "req-funky-size-space-ext",
    "req-l-10k-chunk-extension",
    "resp-l-10k-chunk-extension",
    "req-trailer-line-over-4096",
    "resp-1xx-then-stray-lf",
    "req-connect-content-length",
    "req-head-ows-padding-over-limit",
]


@pytest.mark.parametrize("name", FIXED)
def test_each_bug_issue_18_found_replays_clean_now(name: str) -> None:
    path = harness.CORPUS / name
    outcome = harness.check(harness.target_of(path), path.read_bytes(), exhaustive=True)
    assert outcome.findings == []


def test_every_known_bug_names_a_corpus_file() -> None:
    assert {p.name for p in harness.CORPUS.iterdir()} >= harness.KNOWN_BUGS


def test_mutation_is_deterministic_for_a_seed() -> None:
    pool = [(harness.CORPUS / "req-chunked-upload").read_bytes(), RESPONSE]

    def run(seed: int) -> list[bytes]:
        rnd = random.Random(seed)
        return [harness.mutate(rnd, rnd.choice(pool), pool) for _ in range(50)]

    assert run(7) == run(7) != run(8)
    data = run(7)[-1]
    assert harness.cut_sets(data, False) == harness.cut_sets(data, False)


def test_the_readme_table_shows_every_stricter_category() -> None:
    readme = (FUZZ / "README.md").read_text()
    table = readme.split("## Deliberate differences", 1)[1]
    assert {f"| `{name}` |" for name in harness.STRICTER} <= {
        line.split(" | ")[0] + " |" for line in table.splitlines() if line.startswith("| `")
    }
