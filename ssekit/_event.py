"""What the decoder produces and the encoder consumes."""

from __future__ import annotations

import json as _json
from dataclasses import dataclass
from typing import Any

from ._errors import InputTypeError

__all__ = ("Comment", "Event")


@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class Event:
    """One dispatched server-sent event.

    ``event`` is the event type ("message" when the block named none), ``data``
    the data buffer with its final LF removed, ``id`` the last event ID in
    effect when the event was dispatched ("" when none), and ``retry`` the
    reconnection time in milliseconds from a valid ``retry`` field in the same
    block, else None.

    Built by users with keywords: ``Event(data="hi")``; ``data``, ``event``
    and ``id`` must be str and ``retry`` an int or None, else
    :class:`ssekit.InputTypeError` (a ``TypeError``) naming the field.
    """

    data: str = ""
    event: str = "message"
    id: str = ""
    retry: int | None = None

    def __init__(
        self, *, data: str = "", event: str = "message", id: str = "", retry: int | None = None
    ) -> None:
        # The generated __init__ of a frozen dataclass goes through
        # object.__setattr__ per field; the slot descriptors are ~2x faster,
        # and events are built once per message on every hot path. (The
        # decoder builds its events without __init__: its fields are str.)
        if type(data) is not str or type(event) is not str or type(id) is not str:
            _check_types(data=data, event=event, id=id)
        if retry is not None and not isinstance(retry, int):
            raise InputTypeError(
                f"Event retry must be an int of milliseconds or None, got {retry!r}",
                argument="retry",
                got=type(retry).__name__,
            )
        _set_data(self, data)
        _set_event(self, event)
        _set_id(self, id)
        _set_retry(self, retry)

    # Any, not object: as httpx_sse.ServerSentEvent.json() is typed, so code that
    # indexed the result under mypy --strict still type-checks after the switch.
    def json(self) -> Any:
        """The data parsed as JSON (``json.loads``): whatever the JSON holds, typed ``Any``.

        Raises ``ValueError`` (``json.JSONDecodeError``) when the data is not
        JSON. For OpenAI-style chunks see :func:`ssekit.openai.parse_chunk`,
        which also knows the ``[DONE]`` sentinel and error objects, and returns
        a typed :class:`ssekit.openai.Chunk`.
        """
        return _json.loads(self.data)


def _check_types(**fields: object) -> None:
    for name, value in fields.items():
        if not isinstance(value, str):
            hint = "; decode bytes first" if isinstance(value, bytes | bytearray) else ""
            raise InputTypeError(
                f"Event {name} must be a str, got {type(value).__name__} {value!r}{hint}",
                argument=name,
                got=type(value).__name__,
            )


_set_data = Event.__dict__["data"].__set__
_set_event = Event.__dict__["event"].__set__
_set_id = Event.__dict__["id"].__set__
_set_retry = Event.__dict__["retry"].__set__


@dataclass(frozen=True, slots=True, kw_only=True)
class Comment:
    """A comment line (``:`` first), surfaced only by ``Decoder(comments=True)``.

    ``text`` is what followed the colon, with one leading space removed, as
    for field values; heartbeats are usually comments.
    """

    text: str = ""
