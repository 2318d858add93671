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
#: The longest chunk-size line or trailer line accepted (extensions included).
MAX_LINE: Final = 4096

# chunk-size [ chunk-ext ] CRLF; at most 16 hex digits (a size that fits 64 bits).
_SIZE_LINE: Final = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?")


#: The chunk that ends a chunked body (with no trailer fields).
LAST_CHUNK: Final = b"0\r\n\r\n"


class ChunkError(Exception):
    """The peer's chunked framing is malformed; the message cannot be read on."""


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
    """

    __slots__ = (
        "_buffer",
        "_error",
        "_held",
        "_held_size",
        "_in_chunk",
        "_trailer",
        "done",
        "leftover",
    )

    def __init__(self) -> None:
        self._buffer = b""  # unparsed framing bytes (a size line or trailer in progress)
        self._held: list[bytes] = []
        self._held_size = 0
        self._in_chunk = 0  # payload bytes still due in the current chunk; -2: CRLF due
        self._trailer = False
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
                    self._buffer = buffer[pos:]
                    return out
                if buffer[pos : pos + 2] != b"\r\n":
                    raise self._fail("chunk data longer than its declared size")
                pos += 2
                self._in_chunk = 0
                continue
            newline = buffer.find(b"\r\n", pos)
            if newline < 0:
                if end - pos > MAX_LINE:
                    raise self._fail(f"chunk size or trailer line over {MAX_LINE} bytes")
                self._buffer = buffer[pos:]
                return out
            line = buffer[pos:newline]
            pos = newline + 2
            if self._trailer:
                if not line:  # the empty line ending the trailer section
                    self.done = True
                    self.leftover = buffer[pos:]
                    return out
                continue  # trailer fields are not forwarded (hop-by-hop framing)
            match = _SIZE_LINE.fullmatch(line)
            if match is None:
                raise self._fail(f"bad chunk size line {line[:40]!r}")
            size = int(match.group(1), 16)
            if size == 0:
                self._trailer = True
            else:
                self._in_chunk = size
        return out

    def _fail(self, message: str) -> ChunkError:
        self._error = ChunkError(message)  # nothing more is read from a broken message
        return self._error
