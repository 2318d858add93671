"""The encoder's rules and the streaming writer."""

from __future__ import annotations

import anyio
import pytest

import ssekit
from ssekit import Event, encode, encode_comment

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("data", "lines"),
    [
        ("a\nb", b"data: a\ndata: b\n"),
        ("a\r\nb", b"data: a\ndata: b\n"),
        ("a\rb", b"data: a\ndata: b\n"),
        ("a\n", b"data: a\ndata: \n"),
        ("", b"data: \n"),
        (" lead", b"data:  lead\n"),
        ("你好😀", "data: 你好😀\n".encode()),
    ],
)
def test_data_becomes_one_data_line_per_line(data: str, lines: bytes) -> None:
    wire = encode(Event(data=data))
    assert wire == lines + b"\n"
    assert ssekit.Decoder().feed(wire) == [
        Event(data=data.replace("\r\n", "\n").replace("\r", "\n"))
    ]


def test_event_id_and_retry_lines() -> None:
    assert encode(Event(data="x", event="add", id="7", retry=1500)) == (
        b"event: add\nid: 7\nretry: 1500\ndata: x\n\n"
    )
    assert encode(Event(data="x", event="message")) == b"data: x\n\n"


def test_explicit_empty_id_resets_the_last_event_id() -> None:
    assert encode(Event(data="x"), write_id=True) == b"id\ndata: x\n\n"
    decoder = ssekit.Decoder()
    decoder.feed(encode(Event(data="a", id="1")))
    assert decoder.feed(encode(Event(data="b"), write_id=True)) == [Event(data="b", id="")]
    assert encode(Event(data="x", id="9"), write_id=False) == b"data: x\n\n"


@pytest.mark.parametrize(
    ("event", "cause"),
    [
        (Event(data="x", event="a\nb"), None),
        (Event(data="x", event="a\rb"), None),
        (Event(data="x", id="1\n2"), None),
        (Event(data="x", id="1\x002"), None),
        (Event(data="x", retry=-1), None),
        (Event(data="x", retry=True), None),
        (Event(data="\ud800"), UnicodeEncodeError),  # a lone surrogate: UTF-8 refuses it
    ],
)
def test_what_cannot_be_carried_raises_encode_error(
    event: Event, cause: type[Exception] | None
) -> None:
    with pytest.raises(ssekit.EncodeError) as info:
        encode(event)
    assert isinstance(info.value, ValueError)
    if cause is None:
        assert info.value.__cause__ is None
    else:
        assert isinstance(info.value.__cause__, cause)


def test_comments_split_per_line_and_never_complete_an_event() -> None:
    assert encode_comment("ping") == b": ping\n"
    assert encode_comment("a\nb\r\nc") == b": a\n: b\n: c\n"
    assert encode_comment() == b":\n"
    assert ssekit.Decoder().feed(b"data: x\n" + encode_comment("hb") + b"\n") == [Event(data="x")]


class Sink:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    async def send(self, item: bytes, /) -> None:
        self.sent.append(item)

    async def aclose(self) -> None:
        self.closed = True


async def test_writer_sends_one_frame_per_call_and_closes() -> None:
    sink = Sink()
    async with ssekit.EventWriter(sink) as writer:
        await writer.send(Event(data="a\nb"))
        await writer.comment("hb")
        with pytest.raises(ssekit.EncodeError):
            await writer.send(Event(data="x", id="bad\n"))
    assert sink.sent == [b"data: a\ndata: b\n\n", b": hb\n"]  # nothing of the refused event
    assert sink.closed
    with pytest.raises(ssekit.StateError):
        await writer.send(Event(data="late"))


async def test_writer_over_an_anyio_memory_stream() -> None:
    send, receive = anyio.create_memory_object_stream[bytes](10)

    class Stream:
        async def send(self, item: bytes, /) -> None:
            await send.send(item)

        async def aclose(self) -> None:
            await send.aclose()

    async with receive:
        async with ssekit.EventWriter(Stream()) as writer:
            await writer.send(Event(data="你好", id="1"))
        received = [item async for item in receive]
    assert list(ssekit.iter_events(received)) == [Event(data="你好", id="1")]


# -- blocks without data --------------------------------------------------------


def test_retry_alone_sets_the_reconnection_time_without_an_event() -> None:
    wire = ssekit.encode_fields(retry=5000)
    assert wire == b"retry: 5000\n\n"
    decoder = ssekit.Decoder()
    assert decoder.feed(wire) == []  # no empty event reaches the client
    assert decoder.retry == 5000


def test_id_alone_sets_the_last_event_id_without_an_event() -> None:
    decoder = ssekit.Decoder()
    assert decoder.feed(ssekit.encode_fields(id="42", retry=10)) == []
    assert (decoder.last_event_id, decoder.retry) == ("42", 10)
    assert decoder.feed(encode(Event(data="x"))) == [Event(data="x", id="42")]
    # An empty id writes a bare id line: the client's last event ID is reset.
    assert ssekit.encode_fields(id="") == b"id\n\n"
    assert decoder.feed(ssekit.encode_fields(id="")) == []
    assert decoder.last_event_id == ""


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({}, ssekit.EncodeError),  # nothing to send
        ({"id": "a\nb"}, ssekit.EncodeError),
        ({"id": "a\x00b"}, ssekit.EncodeError),
        ({"retry": -1}, ssekit.EncodeError),
        ({"retry": 1.5}, ssekit.EncodeError),
        ({"id": 5}, TypeError),
    ],
)
def test_encode_fields_refuses_what_would_not_arrive(
    kwargs: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        ssekit.encode_fields(**kwargs)  # type: ignore[arg-type]


async def test_writer_sends_fields_alone() -> None:
    sink = Sink()
    async with ssekit.EventWriter(sink) as writer:
        await writer.fields(retry=2000)
    assert sink.sent == [b"retry: 2000\n\n"]
