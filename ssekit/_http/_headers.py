"""Header helpers both sides share: lookup, media type, the size of a head."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ("Headers", "get_header", "head_size", "is_event_stream")

Headers = list[tuple[bytes, bytes]]


def get_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of ``name`` (lower-case), or None."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def head_size(start_line: bytes, headers: Iterable[tuple[bytes, bytes]]) -> int:
    """About how many bytes a head took on the wire (start line, ``name: value\\r\\n`` each).

    The connection bounds a head only while it is still arriving; one that arrived
    in a single read is measured with this, so one limit holds however it was cut.
    """
    return len(start_line) + 2 + sum(len(k) + len(v) + 4 for k, v in headers) + 2


def is_event_stream(content_type: bytes) -> bool:
    """True for ``text/event-stream`` (parameters and case ignored)."""
    return content_type.split(b";", 1)[0].strip().lower() == b"text/event-stream"
