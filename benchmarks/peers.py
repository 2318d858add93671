"""Each decoder under test, behind one signature: byte chunks in, (type, data, id) out.

Each adapter drives the peer's real parsing path, fed from memory (no network).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator

import ssekit
from ssekit._decoder import PureDecoder

try:
    from ssekit._compiled import Decoder as CompiledDecoder
except ImportError:  # not built: the pure decoder only
    CompiledDecoder = None  # type: ignore[assignment,misc]

Decoded = list[tuple[str, str, str | None]]
Peer = Callable[[list[bytes]], Decoded]


def ssekit_decoder(chunks: list[bytes], decoder_class: type = PureDecoder) -> Decoded:
    decoder = decoder_class()
    out: Decoded = []
    feed = decoder.feed
    append = out.append
    for chunk in chunks:
        # Each event converted as it comes, as every peer's adapter does over
        # its iterator (a comprehension per chunk would add a call per chunk
        # the peers do not pay; keeping the events for one pass at the end
        # would keep them alive, which the peers do not either).
        events = feed(chunk)
        if events:
            for e in events:
                append((e.event, e.data, e.id))
    return out


def httpx_sse(chunks: list[bytes]) -> Decoded:
    import httpx
    import httpx_sse as peer

    response = httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=iter(chunks)
    )
    return [(s.event, s.data, s.id) for s in peer.EventSource(response).iter_sse()]


def sseclient_py(chunks: list[bytes]) -> Decoded:
    import sseclient

    return [(e.event, e.data, e.id) for e in sseclient.SSEClient(iter(chunks)).events()]


def launchdarkly(chunks: list[bytes]) -> Decoded:
    from ld_eventsource.actions import Event
    from ld_eventsource.reader import _BufferedLineReader, _SSEReader

    reader = _SSEReader(_BufferedLineReader.lines_from(chunks))
    return [
        (e.event, e.data, e.last_event_id)
        for e in reader.events_and_comments()
        if isinstance(e, Event)
    ]


def openai_sdk(chunks: list[bytes]) -> Decoded:
    from openai._streaming import SSEDecoder

    return [(s.event or "message", s.data, s.id) for s in SSEDecoder().iter_bytes(iter(chunks))]


class _Raw:
    """What requests.Response.iter_content reads from: our chunks, as they are."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    def stream(self, chunk_size: int, decode_content: bool = True) -> Iterator[bytes]:
        yield from self._chunks


class _End(Exception):
    pass


def requests_sse(chunks: list[bytes], expected_count: int | None = None) -> Decoded:
    import requests
    from requests_sse import EventSource

    response = requests.Response()
    response.status_code = 200
    response.raw = _Raw(chunks)
    source = EventSource("http://127.0.0.1:9/unused", reconnection_time=datetime.timedelta(0))

    def no_reconnect(retry: int = 0) -> None:
        raise _End  # its iterator reconnects at the end of a stream: stop there

    source.connect = no_reconnect  # type: ignore[method-assign]
    source._response = response
    source._data_generator = response.iter_lines()
    out: Decoded = []
    try:
        for event in source:
            out.append((event.type, event.data, event.last_event_id))
    except _End:
        pass
    finally:
        source._session.close()
    return out


def ssekit_compiled(chunks: list[bytes]) -> Decoded:
    return ssekit_decoder(chunks, CompiledDecoder)


#: ssekit's implementations: both when the compiled one is built (whatever
#: SSEKIT_PURE says), the first being the one speed-ups are given against.
SSEKIT: tuple[str, ...] = (
    ("ssekit (compiled)", "ssekit (pure)") if CompiledDecoder is not None else ("ssekit (pure)",)
)

PEERS: dict[str, Peer] = {
    **({"ssekit (compiled)": ssekit_compiled} if CompiledDecoder is not None else {}),
    "ssekit (pure)": ssekit_decoder,
    "httpx-sse": httpx_sse,
    "sseclient-py": sseclient_py,
    "launchdarkly-eventsource": launchdarkly,
    "requests-sse": requests_sse,
    "openai (SDK decoder)": openai_sdk,
}


def check(peer: Peer, chunks: list[bytes], expected: list[ssekit.Event]) -> str | None:
    """None when the peer decoded the events right, else a one-line reason."""
    try:
        got = peer(chunks)
    except Exception as exc:  # a peer crashing is a result too
        return f"raised {type(exc).__name__}: {str(exc)[:60]}"
    want = [(e.event, e.data) for e in expected]
    pairs = [(t or "message", d) for t, d, _ in got]
    if pairs == want:
        return None
    if len(pairs) > len(want):
        extra = [p for p in pairs if p not in want][:1]
        return f"{len(pairs) - len(want)} spurious events, e.g. {extra}"[:90]
    if len(pairs) < len(want):
        return f"lost {len(want) - len(pairs)} of {len(want)} events"
    bad = next(i for i, (a, b) in enumerate(zip(pairs, want, strict=True)) if a != b)
    return f"event {bad} differs: {pairs[bad][1][:30]!r} vs {want[bad][1][:30]!r}"
