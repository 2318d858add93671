"""ssekit's chunked body reader and framer, checked against h11 on the same bytes."""

from __future__ import annotations

import h11
import hypothesis.strategies as st
import pytest
from hypothesis import example, given

from ssekit._http._chunked import MAX_CHUNK_HOLD, ChunkedReader, ChunkError, frame_chunk

HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


def h11_chunks(body: bytes, cuts: list[int]) -> tuple[bytes, bool]:
    """The payload h11 reads from ``body`` fed at ``cuts``, and whether it saw the end."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[(b"host", b"x")]))
    conn.send(h11.EndOfMessage())
    payload, ended = b"", False
    for piece in split(HEAD + body, [c + len(HEAD) for c in cuts]):
        conn.receive_data(piece)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or isinstance(event, h11.EndOfMessage):
                ended = ended or isinstance(event, h11.EndOfMessage)
                break
            if isinstance(event, h11.Data):
                payload += event.data
    return payload, ended


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def ours(body: bytes, cuts: list[int]) -> tuple[list[bytes], ChunkedReader]:
    reader = ChunkedReader()
    out: list[bytes] = []
    for piece in split(body, cuts):
        out += reader.feed(piece)
    return out, reader


chunk_lists = st.lists(st.binary(min_size=1, max_size=300), max_size=8)
trailers = st.sampled_from([b"", b"x-t: 1\r\n", b"a: b\r\nc: d\r\n"])
# RFC 9112 7.1.1 allows whitespace before ";" (BWS); h11 does not, so it is
# tested on its own below rather than against h11.
extensions = st.sampled_from([b"", b";name=value", b";x"])


@given(chunk_lists, trailers, extensions, st.lists(st.integers(0, 3000), max_size=10))
@example([b"data: 1\n\n", b"\xe4\xbd", b"\xa0\n\n"], b"", b"", [1, 2, 3, 4, 5, 6, 7])
@example([b"a"], b"x-t: 1\r\n", b";ext", [])
def test_the_reader_gives_what_h11_gives_for_any_chunking_and_cuts(
    chunks: list[bytes], trailer: bytes, extension: bytes, cuts: list[int]
) -> None:
    body = b"".join(b"%x%b\r\n%b\r\n" % (len(c), extension, c) for c in chunks)
    body += b"0\r\n" + trailer + b"\r\n"
    out, reader = ours(body + b"NEXT", cuts)
    assert reader.done
    assert reader.leftover == b"NEXT"
    assert b"".join(out) == b"".join(chunks) == h11_chunks(body, cuts)[0]
    assert h11_chunks(body, cuts)[1]


@given(chunk_lists)
def test_a_body_read_whole_keeps_every_chunk_boundary(chunks: list[bytes]) -> None:
    body = b"".join(frame_chunk(c) for c in chunks) + b"0\r\n\r\n"
    out, reader = ours(body, [])
    assert out == chunks
    assert reader.done
    assert reader.leftover == b""


@pytest.mark.parametrize("size_line", [b"3 ;x=1", b"3\t;x", b"3 "])
def test_whitespace_after_a_chunk_size_is_refused(size_line: bytes) -> None:
    """RFC 9112 7.1.1 allows whitespace before a ";" (BWS), but h11 and llhttp refuse it
    (llhttp trailing whitespace too): a hop that reads the size otherwise is a desync."""
    with pytest.raises(ChunkError) as caught:
        ours(size_line + b"\r\nabc\r\n0\r\n\r\n", [])
    assert caught.value.status == 400


def test_a_chunk_split_across_reads_comes_out_whole_up_to_the_hold_limit() -> None:
    small = frame_chunk(b"x" * 1000)
    out, _ = ours(small, list(range(1, len(small))))  # byte by byte
    assert out == [b"x" * 1000]
    big = frame_chunk(b"y" * (MAX_CHUNK_HOLD * 2))
    out, _ = ours(big, list(range(0, len(big), 1000)))
    assert b"".join(out) == b"y" * (MAX_CHUNK_HOLD * 2)
    assert all(len(piece) >= MAX_CHUNK_HOLD for piece in out[:-1])


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nab\r\n0\r\n\r\n",  # not hex
        b"3\r\nabcdef\r\n0\r\n\r\n",  # data longer than declared
        b"ffffffffffffffffff\r\n",  # over 64 bits
        b"-1\r\n",
        b"3 3\r\nabc\r\n",
        b"f" * 5000,  # a size line that never ends
    ],
)
def test_malformed_framing_raises_and_stays_failed(body: bytes) -> None:
    reader = ChunkedReader()
    with pytest.raises(ChunkError):
        reader.feed(body)
    with pytest.raises(ChunkError):
        reader.feed(b"0\r\n\r\n")


def test_frame_chunk_is_what_h11_writes() -> None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    conn.next_event()
    conn.send(h11.Response(status_code=200, headers=[]))
    assert conn.send(h11.Data(data=b"hello\n")) == frame_chunk(b"hello\n")


def verdict(body: bytes, cuts: list[int]) -> tuple[object, ...]:
    """What the reader makes of ``body`` fed at ``cuts``: its payload, then the end
    (with the bytes after it), the refusal (with its status), or "incomplete"."""
    reader = ChunkedReader(max_trailer_size=200, max_fields=3)
    out = b""
    try:
        for piece in split(body, cuts):
            out += b"".join(reader.feed(piece))
    except ChunkError as exc:
        return ("refused", exc.status)
    return (out, "end", reader.leftover) if reader.done else (out, "incomplete")


# Pieces of the "funky chunks" family: line endings of every kind, sizes with leading
# zeros or a 0x, extensions with bare CR or LF, trailers valid, folded, framing or long.
size_lines = st.sampled_from(
    [b"3\r\n", b"003\r\n", b"0x3\r\n", b"3\n", b"3\r", b"3;a=b\r\n", b"3;a\rb\r\n",
     b"3;a\nb\r\n", b"3 \r\n", b"3;" + b"e" * 5000 + b"\r\n"]
)  # fmt: skip
trailer_lines = st.sampled_from(
    [b"x: y\r\n", b"x: y\n", b"Transfer-Encoding: x\r\n", b"content-length: 3\r\n",
     b"junk\x00\r\n", b" folded\r\n", b"x:" + b"v" * 300 + b"\r\n", b"\r", b"y:\r\n"]
)  # fmt: skip
last_lines = st.sampled_from([b"0\r\n", b"0\n", b"00\r\n", b"0;x\r\n"])
ends = st.sampled_from([b"\r\n", b"\n", b"\r\r\n", b""])


@given(
    size_lines,
    st.sampled_from([b"abc\r\n", b"abc\n", b"abcd\r\n", b"ab\r\n"]),
    last_lines,
    st.lists(trailer_lines, max_size=5),
    ends,
    st.lists(st.integers(0, 6000), max_size=6),
)
@example(b"3;" + b"e" * 5000 + b"\r\n", b"abc\r\n", b"0\r\n", [], b"\r\n", [20])  # row l
@example(b"3\r\n", b"abc\r\n", b"0\r\n", [b"x: y\n"], b"\n", [])  # row a: bare-LF trailer
@example(b"3\r\n", b"abc\r\n", b"0\r\n", [], b"\n", [9])  # row j: the end split off
def test_the_verdict_on_a_chunked_body_never_depends_on_how_reads_split_it(
    size: bytes, data: bytes, last: bytes, trailer: list[bytes], end: bytes, cuts: list[int]
) -> None:
    body = size + data + last + b"".join(trailer) + end + b"NEXT"
    whole = verdict(body, [])
    assert verdict(body, cuts) == whole
    assert verdict(body, list(range(len(body)))) == whole  # byte by byte
    if whole[-1] == b"NEXT":  # accepted: h11 reads the same payload to the same end
        assert h11_chunks(body[:-4], []) == (whole[0], True)
