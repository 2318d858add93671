"""Sans-IO chunked transfer coding (RFC 9112 7.1): the body hot path, one list per read.

h11 turned every piece of a chunked body into a ``Data`` event through its
state machine; on a relay's hot path that was most of the parsing cost. The
reader here takes bytes and returns the payloads of the chunks they completed,
as one list per call, and the framer writes one HTTP chunk per payload. It
reads response bodies from origins and request bodies from clients; tests
check it against h11.
"""

from __future__ import annotations

import re
from typing import Final

from ._wire import WireError, check_trailer_line

__all__ = (
    "LAST_CHUNK",
    "MAX_CHUNK_HOLD",
    "ChunkError",
    "ChunkedReader",
    "frame_chunk",
    "frame_chunks",
)

#: A chunk arriving over several reads is returned whole up to this size, so
#: chunk boundaries survive without unbounded buffering; a larger one in pieces.
MAX_CHUNK_HOLD: Final = 65536
#: The longest chunk-size line accepted (extensions included), however it arrives.
MAX_LINE: Final = 4096
#: The largest trailer section accepted unless the caller says (the proxy: --max-header-size).
MAX_TRAILER_SIZE: Final = 64 * 1024

# chunk-size [ chunk-ext ] CRLF; at most 16 hex digits (a size that fits 64 bits). No
# whitespace after the size: RFC 9112 7.1.1 allows it before a ";" (BWS), but h11 and
# llhttp both refuse it, and a hop that reads the size differently is a desync.
_SIZE_LINE: Final = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[^\r\n]*)?")


#: The chunk that ends a chunked body (with no trailer fields).
LAST_CHUNK: Final = b"0\r\n\r\n"


class ChunkError(Exception):
    """The peer's chunked framing is malformed; the message cannot be read on.

    ``status`` is the answer a server gives: 400, or 431 for a trailer section past
    its bound.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def frame_chunk(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk carrying ``payload`` (which must not be empty)."""
    return b"%x\r\n%b\r\n" % (len(payload), payload)


def frame_chunks(payloads: list[bytes]) -> bytes:
    """``payloads`` (none empty), each its own chunk, as one write."""
    return b"".join([frame_chunk(payload) for payload in payloads])


class ChunkedReader:
    """Incremental reader of a chunked message body.

    ``feed(data)`` returns the payloads of the chunks ``data`` completed, in
    order; a chunk still arriving is held (up to ``MAX_CHUNK_HOLD``, then
    returned in pieces of at least that size). ``done`` turns True after the
    last chunk and its trailer section; bytes after that are ``leftover``.
    Raises :class:`ChunkError` on bad framing and stays failed.

    The verdict never depends on how the bytes were split into reads. Chunk-size
    lines end in CRLF (as h11 reads them; a bare LF or CR in one is refused, where
    some parsers end the line or skip it: the "funky chunks" desyncs). Trailer lines
    end in CRLF or a bare LF, as head lines do (RFC 9112 2.2, as h11): each must be a
    valid field and not a framing one, the section at most ``max_trailer_size``
    bytes (then 431) and ``max_fields`` lines. Trailer fields are checked, never
    forwarded (hop-by-hop framing).
    """

    __slots__ = (
        "_buffer",
        "_error",
        "_fields",
        "_held",
        "_held_size",
        "_in_chunk",
        "_max_fields",
        "_max_trailer",
        "_trailer",
        "done",
        "leftover",
    )

    def __init__(
        self, max_trailer_size: int = MAX_TRAILER_SIZE, max_fields: int | None = None
    ) -> None:
        self._buffer = b""  # unparsed framing bytes (a size line or trailer in progress)
        self._held: list[bytes] = []
        self._held_size = 0
        self._in_chunk = 0  # payload bytes still due in the current chunk; -2: CRLF due
        self._trailer = -1  # bytes of the trailer section so far (-1: not in it yet)
        self._fields = 0  # trailer field lines so far
        self._max_trailer = max_trailer_size
        self._max_fields = max_fields
        self._error: ChunkError | None = None
        self.done = False
        self.leftover = b""

    def feed(self, data: bytes) -> list[bytes]:
        if self._error is not None:
            raise self._error
        if self.done:
            self.leftover += data
            return []
        out: list[bytes] = []
        buffer = self._buffer + data if self._buffer else data
        self._buffer = b""
        pos = 0
        end = len(buffer)
        while pos < end:
            due = self._in_chunk
            if due > 0:
                take = min(due, end - pos)
                piece = buffer[pos : pos + take]
                pos += take
                due -= take
                self._in_chunk = due
                if due == 0 and not self._held:
                    out.append(piece)  # the common case: a whole chunk in one read
                else:
                    self._held.append(piece)
                    self._held_size += take
                    if due == 0 or self._held_size >= MAX_CHUNK_HOLD:
                        out.append(b"".join(self._held))
                        self._held.clear()
                        self._held_size = 0
                if due == 0:
                    self._in_chunk = -2
                continue
            if due == -2:  # the CRLF closing a chunk's data
                if end - pos < 2:
                    if buffer[pos:] not in (b"", b"\r"):
                        raise self._fail("chunk data longer than its declared size")
                    self._buffer = buffer[pos:]
                    return out
                if buffer[pos : pos + 2] != b"\r\n":
                    raise self._fail("chunk data longer than its declared size")
                pos += 2
                self._in_chunk = 0
                continue
            newline = buffer.find(b"\n", pos)
            if self._trailer >= 0:
                if not self._trailer_line(buffer, pos, newline):
                    self._buffer = buffer[pos:]
                    return out
                if self.done:
                    self.leftover = buffer[newline + 1 :]
                    return out
                pos = newline + 1
                continue
            # The same bound whether or not the line's end has arrived: one verdict per split.
            if (end if newline < 0 else newline) - pos > MAX_LINE:
                raise self._fail(f"chunk size line over {MAX_LINE} bytes")
            if newline < 0:
                self._buffer = buffer[pos:]
                return out
            if buffer[newline - 1 : newline] != b"\r" or newline == pos:
                raise self._fail("chunk size line not ended by CRLF (a bare LF)")
            line = buffer[pos : newline - 1]
            pos = newline + 1
            match = _SIZE_LINE.fullmatch(line)
            if match is None:
                raise self._fail(f"bad chunk size line {line[:40]!r}")
            size = int(match.group(1), 16)
            if size == 0:
                self._trailer = 0
            else:
                self._in_chunk = size
        return out

    def _trailer_line(self, buffer: bytes, pos: int, newline: int) -> bool:
        """Take the trailer line at ``pos`` (ending at ``newline``, -1: not here yet);
        False while it is incomplete. Sets ``done`` at the blank line ending the section."""
        size = self._trailer + ((newline + 1) if newline >= 0 else len(buffer)) - pos
        if size > self._max_trailer:
            raise self._fail(
                f"trailer section over {self._max_trailer} bytes (--max-header-size)", 431
            )
        if newline < 0:
            return False
        self._trailer = size
        line = buffer[pos:newline]
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:  # the blank line ending the trailer section
            self.done = True
            return True
        self._fields += 1
        if self._max_fields is not None and self._fields > self._max_fields:
            raise self._fail(
                f"trailer section over {self._max_fields} fields (--max-header-count)", 431
            )
        try:
            check_trailer_line(line)
        except WireError as exc:
            raise self._fail(str(exc)) from None
        return True

    def _fail(self, message: str, status: int = 400) -> ChunkError:
        self._error = ChunkError(message, status)  # nothing more is read from a broken message
        return self._error
