"""EventWriter: send events and comments over any async byte stream."""

from __future__ import annotations

from typing import Protocol

from ._encoder import encode, encode_comment, encode_fields
from ._errors import StateError
from ._event import Event

__all__ = ("ByteSink", "EventWriter")


class ByteSink(Protocol):
    """What the writer writes to: an anyio ``ByteSendStream`` fits, as does any adapter."""

    async def send(self, item: bytes, /) -> None: ...

    async def aclose(self) -> None: ...


class EventWriter:
    """Write encoded events to ``sink``, each in its own ``send`` so it leaves at once.

    ``send`` and ``comment`` raise what :func:`ssekit.encode` raises
    (:class:`EncodeError`) before anything is written, so a refused event never
    leaves half a frame on the wire. After ``aclose()`` they raise
    :class:`StateError`. Use as an async context manager to close on exit.
    """

    def __init__(self, sink: ByteSink) -> None:
        self._sink = sink
        self.closed = False

    async def send(self, event: Event, *, write_id: bool | None = None) -> None:
        data = encode(event, write_id=write_id)
        self._check_open()
        await self._sink.send(data)

    async def fields(self, *, id: str | None = None, retry: int | None = None) -> None:
        """Send ``id`` and/or ``retry`` without an event (see :func:`ssekit.encode_fields`)."""
        data = encode_fields(id=id, retry=retry)
        self._check_open()
        await self._sink.send(data)

    async def comment(self, text: str = "") -> None:
        """Send a comment (a heartbeat, say): clients ignore it."""
        data = encode_comment(text)
        self._check_open()
        await self._sink.send(data)

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            await self._sink.aclose()

    async def __aenter__(self) -> EventWriter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _check_open(self) -> None:
        if self.closed:
            raise StateError("this EventWriter is closed")
