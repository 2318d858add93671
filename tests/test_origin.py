"""``OriginConnection`` against scripted origins on loopback: framing both ways, and reuse.

Every test runs on both engines (``http_engine``): ssekit's own heads and bodies
(``_wire``, ``_chunked``) and h11's (``_h11.H11Origin``), with the same outcomes
but where a test says otherwise: a HEAD answer, informational responses, bodies
ended by a length, by the close, or malformed, and what may be reused.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

import anyio
import anyio.abc
import pytest
from _servers import read_request, serve_closing

from ssekit import LimitExceeded, UpstreamError
from ssekit._http import Origin, OriginConnection, ResponseHead, _connection, _h11, open_connection
from ssekit._http._wire import WireError, has_blank_line, parse_response_head

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def origin(
    answers: Sequence[bytes], seen: list[bytes]
) -> AsyncIterator[tuple[Origin, list[int]]]:
    """An origin that, on each connection, reads a request and sends the next answer,
    then closes once the answers run out; yields where it is and how many
    connections it took."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    connections = [0]
    queue = list(answers)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        connections[0] += 1
        async with stream:
            while queue:
                request = await read_request(stream)
                if not request:
                    return
                seen.append(request)
                await stream.send(queue.pop(0))

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve_closing, listener, handle)
        yield Origin.from_url(f"http://127.0.0.1:{port}"), connections
        tg.cancel_scope.cancel()


async def body(conn: OriginConnection) -> bytes:
    return b"".join([piece async for piece in conn.receive_body(idle_timeout=5)])


async def exchange(
    conn: OriginConnection, method: str = "GET", headers: Sequence[tuple[bytes, bytes]] = ()
) -> tuple[int, bytes]:
    await conn.send_request(method, "/", [(b"host", b"origin"), *headers])
    response = await conn.receive_response(first_byte_timeout=5)
    return response.status_code, await body(conn)


async def connect(where: Origin, max_head_size: int = 65536, *, engine: str) -> OriginConnection:
    return await open_connection(
        where, connect_timeout=5, max_head_size=max_head_size, engine=engine
    )


async def test_a_head_answer_has_no_body_whatever_its_length_and_the_connection_is_kept(
    http_engine: str,
) -> None:
    seen: list[bytes] = []
    answers = [
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",  # to HEAD: the length of a GET's body
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
    ]
    async with origin(answers, seen) as (where, connections):
        conn = await connect(where, engine=http_engine)
        assert await exchange(conn, "HEAD") == (200, b"")
        assert conn.reusable()
        assert await exchange(conn) == (200, b"hello")
        assert conn.reusable()
        await conn.aclose()
    assert connections == [1]
    assert [request.split(b" ")[0] for request in seen] == [b"HEAD", b"GET"]


async def test_informational_responses_are_passed_over_for_the_final_one(http_engine: str) -> None:
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    async with origin([answer], []) as (where, _):
        conn = await connect(where, engine=http_engine)
        assert await exchange(conn) == (200, b"hello")
        await conn.aclose()


async def test_informational_responses_go_in_order_to_whoever_passes_them_on(
    http_engine: str,
) -> None:
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    )
    passed: list[tuple[int, list[tuple[bytes, bytes]]]] = []

    async def pass_on(head: ResponseHead) -> None:
        passed.append((head.status_code, head.headers))

    async with origin([answer], []) as (where, _):
        conn = await connect(where, engine=http_engine)
        await conn.send_request("GET", "/", [(b"host", b"origin")])
        response = await conn.receive_response(first_byte_timeout=5, informational=pass_on)
        assert response.status_code == 200
        assert await body(conn) == b"ok"
        await conn.aclose()
    assert passed == [(100, []), (103, [(b"link", b"</a>")])]


async def test_a_101_nobody_asked_for_is_a_bad_gateway(http_engine: str) -> None:
    async with origin([b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n"], []) as (
        where,
        _,
    ):
        conn = await connect(where, engine=http_engine)
        with pytest.raises(UpstreamError) as caught:
            await exchange(conn)
        assert caught.value.status == 502
        assert isinstance(caught.value.__cause__, WireError)  # read, and refused as framing
        assert not caught.value.cut
        await conn.aclose()


@pytest.mark.parametrize(
    ("answer", "expected", "kept"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", b"hello", True),
        # Bytes after the body: whatever they are, they must not answer a next request.
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\n\r\n",
            b"hello",
            False,
        ),
        (b"HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\nhello", b"hello", False),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
            b"hello",
            False,
        ),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b"", True),
    ],
)
async def test_a_body_ends_at_its_length_and_the_connection_is_kept_only_when_clean(
    http_engine: str, answer: bytes, expected: bytes, kept: bool
) -> None:
    async with origin([answer], []) as (where, _):
        conn = await connect(where, engine=http_engine)
        assert await exchange(conn) == (int(answer.split(b" ")[1]), expected)
        assert conn.reusable() is kept
        await conn.aclose()


async def test_a_body_without_a_length_is_read_to_the_close_and_never_kept(
    http_engine: str,
) -> None:
    async with origin([b"HTTP/1.1 200 OK\r\n\r\nall of it"], []) as (where, _):
        conn = await connect(where, engine=http_engine)
        await conn.send_request("GET", "/", [(b"host", b"origin")])
        await conn.receive_response(first_byte_timeout=5)
        assert conn.read_to_close
        assert await body(conn) == b"all of it"
        assert not conn.reusable()
        await conn.aclose()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello",  # closes 5 bytes short
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",  # no last chunk
    ],
)
async def test_a_body_cut_by_the_close_is_an_error_not_an_end(
    http_engine: str, answer: bytes
) -> None:
    async with origin([answer], []) as (where, _):
        conn = await connect(where, engine=http_engine)
        with pytest.raises(UpstreamError) as caught:
            await exchange(conn)
        assert caught.value.status == 502
        assert caught.value.cut  # after the head: the answer is incomplete
        assert not conn.reusable()
        await conn.aclose()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-a : 1\r\n\r\n",  # whitespace before the colon (RFC 9112 5.1)
        b"HTTP/9 200 OK\r\n\r\n",
    ],
)
async def test_a_malformed_response_head_is_a_bad_gateway(http_engine: str, answer: bytes) -> None:
    async with origin([answer], []) as (where, _):
        conn = await connect(where, engine=http_engine)
        with pytest.raises(UpstreamError) as caught:
            await exchange(conn)
        assert caught.value.status == 502
        assert isinstance(caught.value.__cause__, WireError)
        assert not caught.value.cut
        await conn.aclose()


async def test_a_response_head_over_the_limit_is_refused_however_it_is_cut(
    http_engine: str,
) -> None:
    head = b"HTTP/1.1 200 OK\r\n" + b"x-filler: " + b"y" * 3000 + b"\r\n\r\n"
    async with origin([head], []) as (where, _):
        conn = await connect(where, max_head_size=1024, engine=http_engine)
        with pytest.raises(UpstreamError) as caught:
            await exchange(conn)
        limit = caught.value.__cause__
        assert isinstance(limit, LimitExceeded)
        assert (limit.limit, limit.maximum, limit.setting) == (
            "response head",
            1024,
            "--max-header-size",
        )
        assert limit.size > 1024
        await conn.aclose()


async def test_a_request_body_must_be_its_content_length_and_nothing_is_sent_otherwise(
    http_engine: str,
) -> None:
    seen: list[bytes] = []
    async with origin([b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"], seen) as (where, _):
        conn = await connect(where, engine=http_engine)
        with pytest.raises(UpstreamError) as caught:
            await conn.send_request(
                "POST", "/", [(b"host", b"o"), (b"content-length", b"10")], b"short"
            )
        assert isinstance(caught.value.__cause__, WireError)  # refused before a byte went
        assert conn.bytes_sent == 0
        if http_engine == "h11":
            # Where the engines differ: h11 stays failed once it refused (its state is
            # ERROR), so that connection carries nothing more (the proxy closes it
            # anyway); ssekit's engine checked before it began, and its connection is
            # still as fresh as it was.
            with pytest.raises(UpstreamError) as refused:
                await conn.send_request("GET", "/", [(b"host", b"o")])
            assert refused.value.status == 502
            await conn.aclose()
            conn = await connect(where, engine=http_engine)
        with pytest.raises(UpstreamError) as caught:
            await conn.send_request("POST", "/", [(b"host", b"o")], b"a body and no length")
        assert isinstance(caught.value.__cause__, WireError)
        assert conn.bytes_sent == 0
        await conn.aclose()
    assert seen == []


async def test_a_streamed_request_body_goes_chunked_or_exactly_as_long_as_declared(
    http_engine: str,
) -> None:
    seen: list[bytes] = []
    answers = [b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"] * 2

    async def pieces() -> AsyncIterator[bytes]:
        for piece in (b"hel", b"", b"lo"):
            yield piece

    async with origin(answers, seen) as (where, _):
        conn = await connect(where, engine=http_engine)
        headers = [(b"transfer-encoding", b"chunked")]
        await conn.send_request("POST", "/", [(b"host", b"o"), *headers], pieces())
        assert (await conn.receive_response(first_byte_timeout=5)).status_code == 200
        assert await body(conn) == b""
        assert conn.reusable()
        await conn.send_request("POST", "/", [(b"host", b"o"), (b"content-length", b"5")], pieces())
        assert (await conn.receive_response(first_byte_timeout=5)).status_code == 200
        assert await body(conn) == b""
        await conn.aclose()
    assert seen[0].endswith(b"\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n")
    assert seen[1].endswith(b"\r\n\r\nhello")


class _Trickle(anyio.abc.ByteStream):
    """An origin that answers one byte per read, whatever was asked for."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer
        self._at = 0

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._at == len(self._answer):
            raise anyio.EndOfStream
        self._at += 1
        return self._answer[self._at - 1 : self._at]

    async def send(self, item: bytes) -> None:
        pass

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def test_a_response_head_a_byte_at_a_time_costs_its_size_not_its_square(
    http_engine: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slow (or hostile) origin must not make each byte re-read all the others."""
    looked_at: list[int] = []

    def parse(data: bytes) -> object:
        looked_at.append(len(data))
        return parse_response_head(data)

    def search(data: bytes | bytearray, start: int = 0) -> bool:
        looked_at.append(len(data) - start)
        return has_blank_line(data, start)

    find_end = _h11._head_end

    def head_end(data: bytes | bytearray) -> int | None:  # h11's engine: where a head ends
        looked_at.append(len(data))
        return find_end(data)

    monkeypatch.setattr(_connection, "parse_response_head", parse)
    monkeypatch.setattr(_connection, "has_blank_line", search, raising=False)
    monkeypatch.setattr(_h11, "_head_end", head_end)
    head = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 20_000 + b"\r\ncontent-length: 2\r\n\r\n"
    origin = Origin.from_url("http://origin")
    conn = OriginConnection(_Trickle(head + b"ok"), origin, engine=http_engine)
    assert await exchange(conn) == (200, b"ok")
    assert sum(looked_at) <= 5 * len(head)


async def test_a_chunk_arriving_a_byte_at_a_time_comes_out_whole(http_engine: str) -> None:
    """One upstream chunk stays one piece (one downstream chunk) on both engines, however
    the reads cut it: h11 hands on a chunk's pieces, its engine puts them back together."""
    answer = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n4\r\n you\r\n0\r\n\r\n"
    )
    origin = Origin.from_url("http://origin")
    conn = OriginConnection(_Trickle(answer), origin, engine=http_engine)
    await conn.send_request("GET", "/", [(b"host", b"origin")])
    assert (await conn.receive_response(first_byte_timeout=5)).status_code == 200
    assert [piece async for piece in conn.receive_body(idle_timeout=5)] == [b"hello", b" you"]


@pytest.mark.parametrize("body", [b"5\r\nhelloXX0\r\n\r\n", b"zz\r\n"])
async def test_a_malformed_chunked_body_is_a_cut_bad_gateway(http_engine: str, body: bytes) -> None:
    answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + body
    async with origin([answer], []) as (where, _):
        conn = await connect(where, engine=http_engine)
        with pytest.raises(UpstreamError) as caught:
            await exchange(conn)
        assert (caught.value.status, caught.value.cut) == (502, True)
        assert not conn.reusable()
        await conn.aclose()


@pytest.mark.parametrize(
    "trailer", [b"not a field", b"transfer-encoding: chunked", b"content-length: 5"]
)
async def test_a_malformed_or_framing_trailer_field_cuts_the_body_on_both_engines(
    http_engine: str, trailer: bytes
) -> None:
    """The trailer section ends a chunked body and is never forwarded, but both engines
    read it: a line that is no field, or a framing field, is a malformed body (502, cut)."""
    answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    answer += b"5\r\nhello\r\n0\r\n" + trailer + b"\r\n\r\n"
    async with origin([answer], []) as (where, _):
        conn = await connect(where, engine=http_engine)
        with pytest.raises(UpstreamError) as caught:
            await exchange(conn)
        assert (caught.value.status, caught.value.cut) == (502, True)
        assert not conn.reusable()
        await conn.aclose()


async def test_only_ssekits_engine_splices_a_chunked_body(http_engine: str) -> None:
    """Where the engines differ: the splice (a chunked body read in the transport's read
    callback) is ssekit's engine's; on h11's the pump reads ``receive_body_batches``."""
    answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    async with origin([answer], []) as (where, _):
        conn = await connect(where, engine=http_engine)
        await conn.send_request("GET", "/", [(b"host", b"origin")])
        await conn.receive_response(first_byte_timeout=5)
        assert conn.spliceable is (http_engine == "ssekit")
        assert await body(conn) == b"ok"
        assert conn.reusable()
        await conn.aclose()
