"""Encode events and comments as ``text/event-stream`` bytes.

The encoder only writes what decodes back to the same event (line breaks in
data normalised to LF), and refuses with :class:`EncodeError` what would not.
"""

from __future__ import annotations

from ._errors import EncodeError
from ._event import Event

__all__ = ("encode", "encode_comment", "encode_fields")


def _lines(text: str) -> list[str]:
    # CRLF, lone CR and LF each end a line on the wire (str.splitlines would
    # also split on U+2028, form feeds and others that SSE treats as text).
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")


def encode(event: Event, *, write_id: bool | None = None) -> bytes:
    """Return the UTF-8 bytes of one event, blank line included.

    Data with LF, CRLF or lone CR becomes one ``data:`` line per line, so the
    client rebuilds it with LF. An event always dispatches, even with empty
    data: ``encode(Event(retry=5000))`` sends an empty message event. To send
    ``retry`` or ``id`` alone, without an event, use :func:`encode_fields`. The ``event``
    line is omitted for "message" (and for "", which reads back as "message");
    ``retry`` is written when not None.

    ``id`` is written when non-empty. ``write_id=True`` writes it even when
    empty (a bare ``id`` line resets the client's last event ID);
    ``write_id=False`` never writes it.

    Raises :class:`EncodeError` for an event type or id with a line break, an
    id with NUL, or a negative retry: none of these would reach the client
    intact.
    """
    data = event.data
    if "\r" in data:
        data = data.replace("\r\n", "\n").replace("\r", "\n")
    if "\n" in data:
        # Every line break starts a new data line; the decoder joins them with LF.
        data = data.replace("\n", "\ndata: ")
    if write_id is None and not event.id and event.retry is None and event.event == "message":
        text = f"data: {data}\n\n"  # the common case: no other field
    else:
        text = f"{_fields(event.event, event.id, event.retry, write_id)}data: {data}\n\n"
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise _surrogate(text, exc) from exc


def encode_parts(data: str, event: str, id: str, retry: int | None) -> bytes:
    """``encode(Event(data=..., event=..., id=..., retry=...))`` without building the Event.

    For callers that hold the fields apart and checked their types (str, str,
    str, int or None): ssekit.asgi encodes sse-starlette-style dicts with it,
    once per item. Same bytes and errors as :func:`encode` (a test holds the
    two together); the body is repeated there so that ``encode`` keeps no
    extra call.
    """
    if "\r" in data:
        data = data.replace("\r\n", "\n").replace("\r", "\n")
    if "\n" in data:
        data = data.replace("\n", "\ndata: ")
    if not id and retry is None and event == "message":
        text = f"data: {data}\n\n"
    else:
        text = f"{_fields(event, id, retry, None)}data: {data}\n\n"
    return _utf8(text)


def encode_fields(*, id: str | None = None, retry: int | None = None) -> bytes:
    """Return a block without data: ``id`` and/or ``retry`` lines, then the blank line.

    The client dispatches no event for it, but (per the spec) the blank line
    sets its last event ID to ``id`` (``""`` writes a bare ``id`` line, which
    resets it), and ``retry`` sets its reconnection time at once. None leaves
    a field out. For example ``encode_fields(retry=5000)`` is
    ``b"retry: 5000\n\n"``: the reconnection time without an empty event.

    Raises :class:`EncodeError` for an id with a line break or NUL, a negative
    or non-int retry, or when both are None (there would be nothing to send);
    :class:`TypeError` for an id that is not a str.
    """
    if id is None and retry is None:
        raise EncodeError("encode_fields needs id or retry (or both); there is nothing to send")
    parts: list[str] = []
    if id is not None:
        parts.append(_id_line(id))
    if retry is not None:
        parts.append(_retry_line(retry))
    return _utf8("".join(parts) + "\n")


def _fields(name: str, ident: str, retry: int | None, write_id: bool | None) -> str:
    """The event, id and retry lines, validated."""
    parts: list[str] = []
    if name != "message":
        if "\r" in name or "\n" in name:
            raise EncodeError(
                f"event type {name!r} contains a line break, which would end the field "
                "early; use a single-line event type"
            )
        if name:  # "" reads back as "message", as when the line is left out.
            parts.append(f"event: {name}\n")
    if write_id or (write_id is None and ident):
        parts.append(_id_line(ident))
    if retry is not None:
        parts.append(_retry_line(retry))
    return "".join(parts)


def _id_line(ident: str) -> str:
    if not isinstance(ident, str):
        raise TypeError(f"id must be a str, got {type(ident).__name__}")
    if "\r" in ident or "\n" in ident:
        raise EncodeError(
            f"id {ident!r} contains a line break, which would end the field early; "
            "use a single-line id"
        )
    if "\0" in ident:
        raise EncodeError(
            f"id {ident!r} contains NUL; clients ignore such an id, so it cannot be sent"
        )
    return f"id: {ident}\n" if ident else "id\n"


def _retry_line(retry: int) -> str:
    # bool is an int; True would write "retry: True".
    if type(retry) is not int or retry < 0:
        raise EncodeError(f"retry must be a non-negative int of milliseconds, got {retry!r}")
    return f"retry: {retry}\n"


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise _surrogate(text, exc) from exc


def _surrogate(text: str, exc: UnicodeEncodeError) -> EncodeError:
    return EncodeError(
        f"text contains {text[exc.start : exc.end]!r} at {exc.start}, a lone surrogate "
        "that UTF-8 cannot carry; pass well-formed text"
    )


def encode_comment(text: str = "") -> bytes:
    """Return a comment (``: text``), one comment line per line of ``text``.

    Clients ignore comments; relays send them as heartbeats. The bytes end
    with LF but no blank line, so they never complete an event.
    """
    return _utf8("".join(f": {line}\n" if line else ":\n" for line in _lines(text)))
