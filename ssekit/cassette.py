"""Cassettes: one recorded HTTP exchange, every body chunk with its arrival time.

``ssekit proxy --record DIR`` writes them; ``ssekit mock-upstream --replay``,
:mod:`ssekit.replay` (an httpx transport, an ASGI app) and ``ssekit cassette
show`` read them. Standard library only (and ssekit's decoder, for ``show``).

The format, version 1: JSON lines, UTF-8, one JSON object per line.

* Line 1, the header::

    {"ssekit_cassette": 1, "recorded_at": "2026-12-07T22:45:00.123Z",
     "request": {"method": "POST", "target": "/v1/chat/completions",
                 "headers": [["content-type", "application/json"], ...], "body": "..."},
     "response": {"status": 200, "reason": "OK", "headers": [[...], ...], "t": 0.0121}}

  Header names and values are latin-1 text (every byte kept); secrets are
  ``[redacted]``. ``body`` is the request body as text, or ``body_b64`` when it
  is not UTF-8. ``response.t`` is when the response head arrived, in seconds
  from the request.
* One line per body chunk, in order, as the proxy received it:
  ``{"t": 0.0153, "data": "data: {...}\\n\\n"}``, or ``{"t": ..., "b64": "..."}``
  when the chunk is not UTF-8 on its own (say, a character cut in two).
  ``t`` is its arrival, in seconds from the request; it never goes back.
* The end line: ``{"end": "complete", "t": 1.2345, "chunks": 42, "bytes": 5123}``.
  ``end`` is how the exchange ended: ``complete``, or why it did not
  (``upstream_cut``, ``upstream_timeout``, ``client_disconnect``, ``shutdown``...);
  a replay of any but ``complete`` is cut (no last chunk). ``chunks`` and
  ``bytes`` count the chunk lines and their bytes, to catch a lost line.

A reader accepts every version up to :data:`VERSION` and refuses a newer one.
A file without its end line was cut off while it was written: it is refused.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import enum
import itertools
import json
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Literal

from ._decoder import Decoder
from ._errors import SSEError
from ._event import Event

__all__ = (
    "MATCH_KEYS",
    "REDACTED",
    "VERSION",
    "Cassette",
    "CassetteError",
    "Chunk",
    "End",
    "Library",
    "Pace",
    "Playback",
    "Problem",
    "Request",
    "Response",
    "chunk_line",
    "end_line",
    "header_line",
    "load",
    "render_timeline",
    "timeline",
)

#: The format version this ssekit writes, and the newest it reads.
VERSION: Final = 1
#: What a secret header's value becomes.
REDACTED: Final = "[redacted]"
#: What ``--match`` may name: a request matches a cassette when these are equal.
MATCH_KEYS: Final = ("method", "path", "query", "body")
DEFAULT_MATCH: Final = ("method", "path", "body")

Headers = tuple[tuple[str, str], ...]


class Problem(enum.Enum):
    """What is wrong with a cassette that cannot be read."""

    NOT_A_CASSETTE = "not_a_cassette"  # empty, or no format version on line 1
    FUTURE_VERSION = "future_version"  # written by a newer ssekit
    NOT_JSON = "not_json"  # a line that is not a JSON object: corrupted
    BAD_FIELD = "bad_field"  # a field missing or of the wrong type
    TIME_BACK = "time_back"  # a chunk earlier than the one before it
    TRUNCATED = "truncated"  # cut off: no end line, or a last line without its newline
    COUNTS = "counts"  # the end line's totals disagree with the chunks: lines lost
    AFTER_END = "after_end"  # lines after the end line


class CassetteError(SSEError, ValueError):
    """A cassette that cannot be read: ``path``, ``line`` (1-based; None for the file
    as a whole), ``problem`` (a :class:`Problem`) and ``reason``, said for people."""

    def __init__(self, path: str, line: int | None, problem: Problem, reason: str) -> None:
        where = path if line is None else f"{path}, line {line}"
        super().__init__(f"cassette {where}: {reason}")
        self.path = path
        self.line = line
        self.problem = problem
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """The recorded request (secret header values already replaced)."""

    method: str
    target: str
    headers: Headers = ()
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """The recorded response head; ``t``: its arrival, seconds from the request."""

    status: int
    reason: str = ""
    headers: Headers = ()
    t: float = 0.0

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One body chunk as received; ``t``: its arrival, seconds from the request."""

    t: float
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class End:
    """How the exchange ended, when (seconds from the request), and the chunk totals."""

    outcome: str
    t: float
    chunks: int
    bytes: int

    @property
    def complete(self) -> bool:
        return self.outcome == "complete"


@dataclass(frozen=True, slots=True, kw_only=True)
class Cassette:
    """One recorded exchange. The chunks stay in the file: :meth:`chunks` reads them
    one line at a time, so a cassette of any size costs a line of memory.

    ``end`` is None when only the header was read (:meth:`Library` indexes that
    way); :func:`load` reads the file through and sets it.
    """

    path: str
    version: int
    recorded_at: str
    request: Request
    response: Response
    end: End | None = None

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def chunks(self) -> Iterator[Chunk]:
        """The body chunks, read from the file as iterated. Raises
        :class:`CassetteError` at a bad line, or at the end when the end line is missing
        or its totals disagree (after yielding every chunk before it)."""
        with open(self.path, "rb") as file:
            next(file, b"")  # the header
            yield from _chunks(file, self.path, None)

    def read_end(self) -> End:
        """``end``, reading the file through if the header was all that was read."""
        if self.end is not None:
            return self.end
        box: list[End] = []
        with open(self.path, "rb") as file:
            next(file, b"")
            for _ in _chunks(file, self.path, box):
                pass
        return box[0]


def load(path: str | os.PathLike[str]) -> Cassette:
    """Read a cassette file: its header, then every line checked (one at a time, none
    kept). Raises :class:`CassetteError` naming the file, the line and what was wrong
    (not JSON, a field missing or of the wrong type, time going back, cut off before
    the end line, a version newer than :data:`VERSION`); ``OSError`` when unreadable."""
    cassette = read_header(path)
    return _replace_end(cassette, cassette.read_end())


def read_header(path: str | os.PathLike[str]) -> Cassette:
    """Only the header line (request, response head): what matching needs."""
    name = os.fspath(path)
    with open(name, "rb") as file:
        first = file.readline()
    if not first:
        raise CassetteError(
            name, None, Problem.NOT_A_CASSETTE, "the file is empty (not a cassette)"
        )
    obj = _json(first, name, 1)
    version = obj.get("ssekit_cassette")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CassetteError(
            name, 1, Problem.NOT_A_CASSETTE, "no 'ssekit_cassette' format version: not a cassette"
        )
    if version > VERSION or version < 1:
        raise CassetteError(
            name,
            1,
            Problem.FUTURE_VERSION,
            f"format version {version}: this ssekit reads versions 1 to {VERSION} "
            "(written by a newer ssekit? upgrade to read it)",
        )
    try:
        req, resp = obj["request"], obj["response"]
        request = Request(
            method=_str(req["method"]),
            target=_str(req["target"]),
            headers=_headers(req.get("headers", [])),
            body=_bytes(req, "body"),
        )
        response = Response(
            status=_int(resp["status"]),
            reason=_str(resp.get("reason", "")),
            headers=_headers(resp.get("headers", [])),
            t=_time(resp.get("t", 0.0)),
        )
        recorded_at = _str(obj.get("recorded_at", ""))
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise CassetteError(name, 1, Problem.BAD_FIELD, f"bad header line: {_what(exc)}") from None
    return Cassette(
        path=name, version=version, recorded_at=recorded_at, request=request, response=response
    )


def _replace_end(cassette: Cassette, end: End) -> Cassette:
    return Cassette(
        path=cassette.path,
        version=cassette.version,
        recorded_at=cassette.recorded_at,
        request=cassette.request,
        response=cassette.response,
        end=end,
    )


def _chunks(file: IO[bytes], name: str, end_box: list[End] | None) -> Iterator[Chunk]:
    count = total = 0
    last_t = 0.0
    number = 1
    for number, raw in enumerate(file, start=2):
        if not raw.endswith(b"\n"):
            raise CassetteError(
                name, number, Problem.TRUNCATED, "truncated: the last line is cut off"
            )
        if not raw.strip():
            continue
        obj = _json(raw, name, number)
        if "end" in obj:
            try:
                end = End(
                    outcome=_str(obj["end"]),
                    t=_time(obj.get("t", last_t)),
                    chunks=_int(obj["chunks"]),
                    bytes=_int(obj["bytes"]),
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise CassetteError(
                    name, number, Problem.BAD_FIELD, f"bad end line: {_what(exc)}"
                ) from None
            if (end.chunks, end.bytes) != (count, total):
                raise CassetteError(
                    name,
                    number,
                    Problem.COUNTS,
                    f"the end line counts {end.chunks} chunks of {end.bytes} bytes, the file "
                    f"holds {count} of {total}: lines were lost or changed",
                )
            if any(line.strip() for line in file):
                raise CassetteError(name, number + 1, Problem.AFTER_END, "lines after the end line")
            if end_box is not None:
                end_box.append(end)
            return
        try:
            t = _time(obj["t"])
            if "b64" in obj:
                data = base64.b64decode(_str(obj["b64"]), validate=True)
            else:
                data = _str(obj["data"]).encode()
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise CassetteError(
                name, number, Problem.BAD_FIELD, f"bad chunk line: {_what(exc)}"
            ) from None
        if t < last_t:
            raise CassetteError(
                name,
                number,
                Problem.TIME_BACK,
                f"chunk time {t} goes back (the previous chunk is at {last_t})",
            )
        last_t = t
        count += 1
        total += len(data)
        yield Chunk(t, data)
    raise CassetteError(
        name,
        number,
        Problem.TRUNCATED,
        f"truncated: no end line after {count} chunks (the recording was cut off)",
    )


def _json(raw: bytes, name: str, number: int) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CassetteError(
            name, number, Problem.NOT_JSON, f"not JSON (corrupted?): {exc}"
        ) from None
    if not isinstance(obj, dict):
        raise CassetteError(
            name, number, Problem.NOT_JSON, f"a JSON {type(obj).__name__}, not an object"
        )
    return obj


def _what(exc: BaseException) -> str:
    return f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"expected a whole number >= 0, got {value!r}")
    return value


def _time(value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
        raise TypeError(f"expected a time in seconds >= 0, got {value!r}")
    return float(value)


def _headers(value: object) -> Headers:
    if not isinstance(value, list):
        raise TypeError("headers must be a list of [name, value] pairs")
    pairs = []
    for pair in value:
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
        ):
            raise TypeError(f"header {pair!r} is not a [name, value] pair of strings")
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)


def _bytes(obj: dict[str, Any], key: str) -> bytes:
    if f"{key}_b64" in obj:
        return base64.b64decode(_str(obj[f"{key}_b64"]), validate=True)
    return _str(obj.get(key, "")).encode()


# -- writing ------------------------------------------------------------------------------


def _text_or_b64(key: str, data: bytes) -> dict[str, str]:
    try:
        return {key: data.decode()}
    except UnicodeDecodeError:
        return {f"{key}_b64" if key != "data" else "b64": base64.b64encode(data).decode()}


def _pairs(headers: Iterable[tuple[bytes | str, bytes | str]]) -> list[list[str]]:
    return [
        [k.decode("latin-1") if isinstance(k, bytes) else k,
         v.decode("latin-1") if isinstance(v, bytes) else v]
        for k, v in headers
    ]  # fmt: skip


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def header_line(
    *,
    method: str,
    target: str,
    request_headers: Iterable[tuple[bytes | str, bytes | str]],
    body: bytes,
    status: int,
    reason: str,
    response_headers: Iterable[tuple[bytes | str, bytes | str]],
    t: float,
    recorded_at: str,
) -> bytes:
    """The header line (headers as given: redact before)."""
    return _line(
        {
            "ssekit_cassette": VERSION,
            "recorded_at": recorded_at,
            "request": {
                "method": method,
                "target": target,
                "headers": _pairs(request_headers),
                **_text_or_b64("body", body),
            },
            "response": {
                "status": status,
                "reason": reason,
                "headers": _pairs(response_headers),
                "t": round(t, 6),
            },
        }
    )


def chunk_line(t: float, data: bytes) -> bytes:
    """One chunk's line: text when the chunk is UTF-8 on its own, else base64."""
    return _line({"t": round(t, 6), **_text_or_b64("data", bytes(data))})


def end_line(outcome: str, t: float, chunks: int, size: int) -> bytes:
    return _line({"end": outcome, "t": round(t, 6), "chunks": chunks, "bytes": size})


# -- a directory of cassettes, matched to requests -----------------------------------------


def _body_key(body: bytes) -> object:
    """JSON bodies compare as data (key order, spacing ignored); others as bytes."""
    try:
        return ("json", json.loads(body))
    except (ValueError, UnicodeDecodeError):
        return ("bytes", body)


def _keys(match: Sequence[str], method: str, target: str, body: bytes) -> dict[str, object]:
    path, _, query = target.partition("?")
    values: dict[str, object] = {"method": method.upper(), "path": path, "query": query}
    if "body" in match:
        values["body"] = _body_key(body)
    return {k: values[k] for k in match}


class Library:
    """The cassettes of a directory (every ``*.jsonl``), or a single file.

    Nothing is read until the first :meth:`find`; then only each file's header line
    (request and response head), never its chunks. ``match`` names what must be
    equal (:data:`MATCH_KEYS`). Several cassettes matching one request are served
    in turn (in file-name order), then again from the first.
    """

    def __init__(self, path: str | os.PathLike[str], match: Sequence[str] = DEFAULT_MATCH) -> None:
        unknown = sorted(set(match) - set(MATCH_KEYS))
        if unknown:
            raise ValueError(f"unknown match keys {unknown}: choose among {list(MATCH_KEYS)}")
        self.path = Path(path)
        self.match = tuple(match)
        self._index: list[tuple[Cassette, dict[str, object]]] | None = None
        self._turns: dict[str, itertools.count[int]] = {}

    def _files(self) -> list[Path]:
        if self.path.is_dir():
            return sorted(p for p in self.path.iterdir() if p.suffix == ".jsonl")
        return [self.path]

    @property
    def cassettes(self) -> list[Cassette]:
        """Every cassette's header (read once); raises :class:`CassetteError` for a bad one."""
        if self._index is None:
            index = []
            for file in self._files():
                cassette = read_header(file)
                req = cassette.request
                index.append((cassette, _keys(self.match, req.method, req.target, req.body)))
            self._index = index
        return [c for c, _ in self._index]

    def find(self, method: str, target: str, body: bytes) -> Cassette | None:
        """The cassette answering this request, or None."""
        self.cassettes  # noqa: B018 -- read the headers once
        assert self._index is not None
        wanted = _keys(self.match, method, target, body)
        found = [c for c, keys in self._index if keys == wanted]
        if not found:
            return None
        turn = self._turns.setdefault(repr(sorted(wanted.items(), key=str)), itertools.count())
        return found[next(turn) % len(found)]

    def closest(self, method: str, target: str, body: bytes, n: int = 3) -> list[dict[str, Any]]:
        """The ``n`` cassettes nearest this request: file, method, target, and which
        match keys differ, nearest first."""
        wanted = _keys(MATCH_KEYS, method, target, body)
        scored = []
        for cassette in self.cassettes:
            req = cassette.request
            keys = _keys(MATCH_KEYS, req.method, req.target, req.body)
            differs = [k for k in self.match if keys[k] != wanted[k]]
            likeness = difflib.SequenceMatcher(None, req.target, target).ratio()
            scored.append((len(differs), -likeness, cassette.name, req, differs))
        scored.sort(key=lambda item: item[:3])
        return [
            {"file": name, "method": req.method, "target": req.target, "differs": differs}
            for _, _, name, req, differs in scored[:n]
        ]


# -- playing a cassette back --------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Pace:
    """How a cassette is played back.

    ``speed``: 1 is as recorded, 2 twice as fast, None no waiting at all.
    ``rechunk``: None keeps the recorded chunks; ``"1"`` cuts them into single
    bytes, ``"random"`` into random pieces (from ``seed``), each at its chunk's time.
    ``cut_after``: end the body, cut (no last chunk), after this many events.
    """

    speed: float | None = 1.0
    rechunk: Literal["1", "random"] | None = None
    cut_after: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.speed is not None and not self.speed > 0:
            raise ValueError(f"speed {self.speed!r} must be positive (None: no waiting)")
        if self.rechunk not in (None, "1", "random"):
            raise ValueError(f"rechunk {self.rechunk!r} is not '1' or 'random'")
        if self.cut_after is not None and self.cut_after < 0:
            raise ValueError(f"cut_after {self.cut_after!r} must not be negative")

    def due(self, t: float) -> float:
        """When something recorded at ``t`` is due in the playback (seconds from its start)."""
        return 0.0 if self.speed is None else t / self.speed


@dataclass(slots=True)
class Playback:
    """The pieces to send, each with when it is due (seconds from the request),
    read from the file as iterated. After iteration ``clean`` says whether the
    body is to end normally (the recording was complete and not cut short by
    ``cut_after``); a broken file raises :class:`CassetteError` from the iteration."""

    cassette: Cassette
    pace: Pace = field(default_factory=Pace)
    clean: bool = False

    @property
    def head_due(self) -> float:
        return self.pace.due(self.cassette.response.t)

    def __iter__(self) -> Iterator[tuple[float, bytes]]:
        pace = self.pace
        rnd = random.Random(pace.seed)
        decoder: Decoder[Event] | None = None if pace.cut_after is None else Decoder()
        events = 0
        self.clean = False
        if pace.cut_after == 0:
            return
        box: list[End] = []
        with open(self.cassette.path, "rb") as file:
            next(file, b"")
            for chunk in _chunks(file, self.cassette.path, box):
                data = chunk.data
                if decoder is not None and pace.cut_after is not None:
                    upto, seen = _events_end(decoder, data, pace.cut_after - events)
                    events += seen
                    if upto is not None:
                        yield from _recut(pace, rnd, pace.due(chunk.t), data[:upto])
                        return
                yield from _recut(pace, rnd, pace.due(chunk.t), data)
        self.clean = box[0].complete


def _events_end(decoder: Decoder[Event], data: bytes, wanted: int) -> tuple[int | None, int]:
    """Feed ``data`` a byte at a time: the offset just past the ``wanted``-th event
    dispatched in it (and the LF of a CRLF closing it), or None; and how many were."""
    seen = 0
    for i in range(len(data)):
        seen += len(decoder.feed(data[i : i + 1]))
        if seen >= wanted:
            end = i + 1
            if data[i : i + 1] == b"\r" and data[end : end + 1] == b"\n":
                end += 1
            return end, seen
    return None, seen


def _recut(
    pace: Pace, rnd: random.Random, due: float, data: bytes
) -> Iterator[tuple[float, bytes]]:
    if pace.rechunk is None or len(data) <= 1:
        if data:
            yield due, data
        return
    i = 0
    while i < len(data):
        size = 1 if pace.rechunk == "1" else rnd.randint(1, max(1, min(64, len(data) - i)))
        yield due, data[i : i + size]
        i += size


# -- a timeline for people ---------------------------------------------------------------


def _cuts_utf8(data: bytes) -> bool:
    """True when ``data`` ends inside a UTF-8 character (its last bytes start one)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # a lead byte or ASCII
            need = (
                2
                if byte >> 5 == 0b110
                else 3
                if byte >> 4 == 0b1110
                else 4
                if byte >> 3 == 0b11110
                else 1
            )
            return need > back
    return False


def timeline(cassette: Cassette) -> dict[str, Any]:
    """What a person wants when a stream misbehaves, as data: the request, time to
    first byte, each event (offset, gap from the previous, its chunk), every chunk
    boundary that cuts an event or a UTF-8 character, and the end. Times in ms."""
    decoder: Decoder[Event] = Decoder()
    events: list[dict[str, Any]] = []
    cuts: list[dict[str, Any]] = []
    previous = None
    first_byte = None
    for number, chunk in enumerate(cassette.chunks(), start=1):
        if first_byte is None:
            first_byte = chunk.t
        for event in decoder.feed(chunk.data):
            offset = chunk.t
            events.append(
                {
                    "n": len(events) + 1,
                    "offset_ms": _ms(offset),
                    "gap_ms": _ms(offset - (cassette.response.t if previous is None else previous)),
                    "chunk": number,
                    "event": event.event,
                    "id": event.id,
                    "data": event.data,
                }
            )
            previous = offset
        cut = []
        if not decoder.at_boundary:
            cut.append("event")
        if _cuts_utf8(chunk.data):
            cut.append("utf-8")
        if cut:
            cuts.append(
                {"chunk": number, "offset_ms": _ms(chunk.t), "cuts": cut, "size": len(chunk.data)}
            )
    end = cassette.read_end()
    req, resp = cassette.request, cassette.response
    return {
        "file": cassette.path,
        "version": cassette.version,
        "request": {"method": req.method, "target": req.target},
        "response": {"status": resp.status, "content_type": resp.header("content-type")},
        "ttfb_ms": _ms(resp.t),
        "first_chunk_ms": None if first_byte is None else _ms(first_byte),
        "events": events,
        "cuts": cuts,
        "end": {
            "outcome": end.outcome,
            "t_ms": _ms(end.t),
            "chunks": end.chunks,
            "bytes": end.bytes,
            "unfinished_event": not decoder.at_boundary,
        },
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def render_timeline(view: dict[str, Any], width: int = 72) -> str:
    """:func:`timeline`'s data as text: one line per event, chunk cuts between them."""
    req, resp, end = view["request"], view["response"], view["end"]
    lines = [
        f"{view['file']}  (ssekit cassette v{view['version']})",
        f"{req['method']} {req['target']} -> {resp['status']} {resp['content_type'] or ''}",
        f"time to first byte {view['ttfb_ms']} ms (head), first chunk at "
        f"{view['first_chunk_ms']} ms",
        f"{'offset ms':>10} {'gap ms':>8}  event",
    ]
    cuts = {c["chunk"]: c for c in view["cuts"]}
    shown: set[int] = set()
    for event in view["events"]:
        for number in sorted(n for n in cuts if n < event["chunk"] and n not in shown):
            lines.append(_cut_line(cuts[number]))
            shown.add(number)
        label = f"#{event['n']}"
        if event["event"] != "message":
            label += f" {event['event']}"
        if event["id"]:
            label += f" id={event['id']}"
        text = event["data"].replace("\n", "\\n")
        room = max(10, width - len(label) - 22)
        if len(text) > room:
            text = text[: room - 1] + "…"
        lines.append(f"{event['offset_ms']:>10.1f} {event['gap_ms']:>+8.1f}  {label} {text}")
    lines.extend(_cut_line(cuts[n]) for n in sorted(cuts) if n not in shown)
    lines.append(
        f"end: {end['outcome']} at {end['t_ms']} ms; {end['chunks']} chunks, {end['bytes']} "
        f"bytes, {len(view['events'])} events"
        + ("; an event was left unfinished" if end["unfinished_event"] else "")
    )
    return "\n".join(lines)


def _cut_line(cut: dict[str, Any]) -> str:
    what = " and ".join("an event" if c == "event" else "a UTF-8 character" for c in cut["cuts"])
    where = f"{cut['offset_ms']:>10.1f} {'':>8}"
    return f"{where}  ~ chunk {cut['chunk']} ({cut['size']} B) ends inside {what}"
