"""Sans-IO incremental decoder for ``text/event-stream``.

Implements WHATWG HTML, "Server-sent events", sections 9.2.5 (Parsing an
event stream) and 9.2.6 (Interpreting an event stream):
https://html.spec.whatwg.org/multipage/server-sent-events.html#parsing-an-event-stream

The decoder works on bytes and decodes UTF-8 one line (or one data buffer) at a
time. That is exactly the spec's streaming UTF-8 decode: CR and LF are ASCII and
can never continue a multi-byte sequence, so a sequence cut by a line break is
replaced by U+FFFD the same way either way, and a character split across two
``feed()`` calls sits whole in the buffered partial line before it is decoded.

This module is the reference implementation and the fallback. ssekit/_cdecoder.c
is the same algorithm compiled; at the end of this module ``Decoder`` becomes
that class when it was built, unless ``SSEKIT_PURE`` is set (see
``decoder_implementation``).
"""

from __future__ import annotations

import operator
import os
import warnings
from typing import TYPE_CHECKING, Final, Generic, Literal, NoReturn, TypeVar, cast, overload

from ._errors import InputTypeError, LimitExceeded, StateError
from ._event import Comment, Event

__all__ = ("DEFAULT_MAX_EVENT_SIZE", "MAX_RETRY", "Decoder", "decoder_implementation")

#: Default bound, in bytes, on one line and on one event's data buffer.
DEFAULT_MAX_EVENT_SIZE: Final = 16 * 1024 * 1024

#: The largest reconnection time a ``retry`` field can set: Chromium reads the
#: value as an unsigned 64-bit integer and ignores one that does not fit.
MAX_RETRY: Final = 2**64 - 1

_BOM: Final = b"\xef\xbb\xbf"

# The fields whose values the decoder keeps or interprets.
_KEPT: Final = (b"data", b"event", b"id", b"retry")

T = TypeVar("T", Event, "Event | Comment")


class _Building:
    """An Event under construction: Event's slots, without its frozen ``__setattr__``.

    Building an event is most of the cost of a small one. A frozen dataclass
    sets each field through ``object.__setattr__`` (or a slot descriptor call,
    ~40 ns each); this ``__init__`` stores straight into the slots, and
    assigning ``__class__`` then makes the object the complete, frozen Event
    it is (CPython allows it between classes with the same slots): 40% less
    per event. ``test_decoded_events_are_plain_events`` pins the layout.
    """

    __slots__ = ("data", "event", "id", "retry")

    def __init__(self, data: str, event: str, id: str, retry: int | None) -> None:
        self.data = data
        self.event = event
        self.id = id
        self.retry = retry


def _bytes_of(data: object) -> bytes:
    """``data`` as bytes if it is a bytes-like object, else :class:`InputTypeError`."""
    try:
        return bytes(memoryview(data))  # type: ignore[arg-type]
    except TypeError:
        raise _not_bytes(data) from None


def _not_bytes(data: object) -> InputTypeError:
    kind = type(data).__name__
    hint = "encode it first (text.encode())" if isinstance(data, str) else "pass bytes"
    return InputTypeError(
        f"Decoder.feed takes bytes (a chunk of the stream), got {kind}: {hint}",
        argument="data",
        got=kind,
    )


def _decode(raw: bytes) -> str:
    """UTF-8 with U+FFFD replacement (strict first: the same result, faster when valid)."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace")


class Decoder(Generic[T]):
    """Turn chunks of an event stream into events, for any split of the input.

    ``feed(chunk)`` returns every event the chunk completed, in order: an event
    comes out of the call that delivers its terminating blank line, never
    later. ``close()`` ends the stream; per the spec an event still being built
    is dropped, and ``ended_mid_event`` tells whether there was one.

    With ``comments=True``, :class:`Comment` items are returned too, in stream
    order, so a relay can see heartbeats.

    ``max_event_size`` (bytes, call it N) bounds what the decoder holds: the
    unterminated line and the event's data buffer. The rule, the same for
    every split of the input:

    1. A line (excluding its line break) longer than N is *dropped* when its
       first N bytes already show that the decoder ignores it: they begin
       with ``:`` and ``comments`` is false (a comment nobody asked for), or
       they hold a colon and the field name before it is not ``data``,
       ``event``, ``id`` or ``retry``, or they hold no colon and do not begin
       any of those four names (so the name is some other, longer one). Such a
       line is interpreted as what it is, an ignored line, and its bytes past
       the first N are discarded as they arrive, never held.
    2. Any other line longer than N raises: its value would be held (data,
       the event type until dispatch, the last event ID, a returned comment)
       or could only be judged whole (``retry: 000...05`` is a valid 5).
       A line still arriving raises as soon as it passes N bytes, an
       unterminated last line included.
    3. An event's data buffer, counted as the sum of its data values plus
       one per ``data`` line (the LF that joins them), must be at most N.

    Passing 2 or 3 makes ``feed`` raise :class:`LimitExceeded`, carrying in
    ``events`` what that chunk completed before the offending line. The
    decoder then stays failed: every later call raises :class:`StateError`.
    Nothing else is ever raised for content, since the spec gives every byte
    sequence a meaning. So the decoder holds at most about N bytes of line
    plus N of data, and one chunk while it looks at it.

    Stream-level state the spec keeps on the EventSource is readable (and
    read-only) here: ``last_event_id`` (set at each dispatch, even of an empty
    block; start it with ``last_event_id=``, as a reconnecting EventSource
    starts its new parser from the previous ID) and ``retry`` (the
    reconnection time in ms, None until a valid ``retry`` field). A ``retry``
    value over :data:`MAX_RETRY` is ignored, as Chromium ignores it, and is
    never converted to an int (a megabyte of digits would take seconds).

    A Decoder copies and pickles mid-stream (``copy.copy``, ``copy.deepcopy``,
    ``pickle``): the copy goes on where the original was and shares nothing
    with it. Both implementations keep the same state (``__getstate__``).
    """

    __slots__ = (
        "_block_retry",
        "_bom_pending",
        "_closed",
        "_comments",
        "_data",
        "_data_size",
        "_error",
        "_event_type",
        "_id_buffer",
        "_last_event_id",
        "_line",
        "_max",
        "_pending",
        "_retry",
        "_skip_lf",
        "_skipping",
        "_slow",
    )

    @overload
    def __init__(
        self: Decoder[Event],
        *,
        comments: Literal[False] = False,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        last_event_id: str = "",
    ) -> None: ...

    @overload
    def __init__(
        self: Decoder[Event | Comment],
        *,
        comments: Literal[True],
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        last_event_id: str = "",
    ) -> None: ...

    @overload
    def __init__(
        self: Decoder[Event | Comment],
        *,
        comments: bool,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        last_event_id: str = "",
    ) -> None: ...

    def __init__(
        self,
        *,
        comments: bool = False,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        last_event_id: str = "",
    ) -> None:
        try:
            # An int, or what stands for one (operator.index): never a float.
            max_event_size = operator.index(max_event_size)
        except TypeError:
            kind = type(max_event_size).__name__
            raise InputTypeError(
                f"max_event_size must be an int (a number of bytes), got {kind}",
                argument="max_event_size",
                got=kind,
            ) from None
        if max_event_size < 1:
            raise ValueError(f"max_event_size must be at least 1, got {max_event_size}")
        if not isinstance(last_event_id, str):
            kind = type(last_event_id).__name__
            raise InputTypeError(
                f"last_event_id must be a str, got {kind}", argument="last_event_id", got=kind
            )
        self._comments = bool(comments)
        self._max = max_event_size
        self._last_event_id = last_event_id
        self._retry: int | None = None
        self._closed = False
        self._error: LimitExceeded | None = None
        # Bytes of the first line while they could still be a split BOM.
        self._bom_pending: bytes | None = b""
        # Any rare state is on (failed, closed, BOM undecided, LF owed): feed()
        # checks this one flag on its fast path.
        self._slow = True
        # The previous chunk ended in CR: an LF opening this one belongs to it.
        self._skip_lf = False
        # Inside a dropped line longer than the bound: discard up to its end.
        self._skipping = False
        # The unterminated line (see _extend_line).
        self._line = bytearray()
        # The spec's buffers. The data buffer is kept as its lines (bytes),
        # joined with LF and decoded once at dispatch.
        self._data: list[bytes] = []
        self._data_size = 0
        self._event_type = b""
        # The spec's last event ID buffer starts from the EventSource's last
        # event ID, which survives reconnections.
        self._id_buffer = last_event_id
        self._block_retry: int | None = None
        # A field other than data or a comment (event, id, retry, unknown) was
        # seen since the last blank line.
        self._pending = False

    def __getstate__(self) -> tuple[None, dict[str, object]]:
        """What copy and pickle keep: ``(None, {slot: value})``, the buffers copied.

        So a copy goes on from where the original was without sharing its partial
        line or data buffer. The compiled Decoder gives and takes the same state.
        """
        _, slots = cast("tuple[None, dict[str, object]]", object.__getstate__(self))
        slots["_line"] = bytearray(self._line)
        slots["_data"] = list(self._data)
        return None, slots

    def __setstate__(self, state: tuple[None, dict[str, object]]) -> None:
        """Go on from a state ``__getstate__`` gave (this Decoder's or the compiled one's)."""
        _, slots = state
        for name, value in slots.items():
            setattr(self, name, value)
        self._line = bytearray(self._line)  # never the state's own buffers
        self._data = list(self._data)

    @property
    def last_event_id(self) -> str:
        """The EventSource's last event ID: "" until a block with an ``id`` is dispatched."""
        return self._last_event_id

    @property
    def retry(self) -> int | None:
        """The reconnection time in ms from the latest valid ``retry`` field, else None."""
        return self._retry

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed

    def __repr__(self) -> str:
        # State only: buffered content may be large or sensitive.
        state = "failed" if self._error is not None else "closed" if self._closed else "open"
        return (
            f"<ssekit.Decoder {state} last_event_id={self._last_event_id!r} "
            f"retry={self._retry!r} at_boundary={self.at_boundary} "
            f"comments={self._comments} max_event_size={self._max} implementation=pure>"
        )

    @property
    def at_boundary(self) -> bool:
        """True between blocks: no partial line and no fields since the last blank line.

        A relay may insert its own event or comment here without changing the
        meaning of what it forwards. False once the decoder failed: it stopped
        inside a line and no longer knows where events end.
        """
        return not (
            self._line
            or self._data
            or self._pending
            or self._bom_pending
            or self._skipping
            or self._error is not None
        )

    @property
    def ended_mid_event(self) -> bool:
        """True when the stream so far stops inside a line or an undispatched block."""
        return not self.at_boundary

    def feed(self, data: bytes | bytearray | memoryview) -> list[T]:
        """Consume one chunk; return the events (and comments) it completed.

        Raises :class:`LimitExceeded` when a line or an event's data passes
        ``max_event_size``, and :class:`StateError` after ``close()`` or after
        an earlier error; :class:`InputTypeError` (a ``TypeError``) for a
        ``str`` or anything else that is not bytes, leaving the decoder as it was.
        """
        if self._slow:
            # Rare states first: failed or closed, a BOM still undecided, an LF
            # owed to a CR that ended the previous chunk, a dropped line. Only a
            # buffer converts (bytes(5) would be five NULs): else InputTypeError.
            maybe_chunk = self._maybe_prelude(data if type(data) is bytes else _bytes_of(data))
            if maybe_chunk is None:
                return []
            data = maybe_chunk
        try:
            has_cr = 0x0D in data
        except TypeError:
            # Only a str (or a non-buffer) gets here: the check costs bytes nothing.
            raise _not_bytes(data) from None
        if has_cr:
            # CRLF, lone CR and LF all end lines: bytes.splitlines splits on
            # exactly these three, in one pass. A CR ending the chunk ends its
            # line now (latency); the LF that may open the next chunk is dropped.
            chunk = data if type(data) is bytes else _bytes_of(data)
            last = chunk[-1]
            if last == 0x0D:
                self._skip_lf = self._slow = True
            lines = chunk.splitlines()
            if last == 0x0D or last == 0x0A:
                rest = b""
                if (
                    len(lines) == 2
                    and not lines[1]
                    and lines[0][:6] == b"data: "
                    and not self._line
                    and not self._data
                    and not self._pending
                    and len(chunk) <= self._max
                ):
                    # One whole single-line event with CRLF or CR endings.
                    self._last_event_id = last_id = self._id_buffer
                    event = _Building(_decode(lines[0][6:]), "message", last_id, None)
                    event.__class__ = Event  # type: ignore[assignment]
                    return [event]  # type: ignore[list-item]
            else:
                rest = lines.pop()
        elif 0x0A not in data:
            # No line break (the path of every byte-sized read): the whole
            # chunk extends the partial line. It is one bytearray, so appending
            # is amortised O(len(chunk)) with no rescan, and memory stays the
            # line's length. Any buffer type appends as it is.
            line = self._line
            try:
                line += data  # in place
            except (TypeError, BufferError):
                # Not a buffer (a list of ints), or a strided one: its bytes or
                # InputTypeError; the line is unchanged either way.
                line += _bytes_of(data)
            if len(line) > self._max:
                self._overflow()
            return []
        else:
            chunk = data if type(data) is bytes else _bytes_of(data)
            if (
                chunk[-1] == 0x0A
                and chunk[:6] == b"data: "
                and chunk.find(b"\n") == len(chunk) - 2
                and not self._line
                and not self._data
                and not self._pending
                and len(chunk) <= self._max
            ):
                # The common case, one whole single-line event per chunk:
                # dispatch it at once, as _process would with every buffer empty.
                self._last_event_id = last_id = self._id_buffer
                event = _Building(_decode(chunk[6:-2]), "message", last_id, None)
                event.__class__ = Event  # type: ignore[assignment]
                return [event]  # type: ignore[list-item]
            lines = chunk.split(b"\n")
            rest = lines.pop()
        out: list[T] = []
        try:
            if lines:
                if self._line:
                    self._line += lines[0]
                    lines[0] = bytes(self._line)
                    self._line = bytearray()
                if len(chunk) > self._max or len(lines[0]) > self._max:
                    # Only a chunk this large can hold a line over the bound.
                    limit = self._max
                    for index, whole in enumerate(lines):
                        if len(whole) > limit:
                            stand_in = self._maybe_stand_in(whole)
                            if stand_in is None:
                                # Interpret the lines before it, then fail on it.
                                self._process(lines[:index], out)
                                self._fail(
                                    LimitExceeded("line", len(whole), limit, "max_event_size")
                                )
                            lines[index] = stand_in
                self._process(lines, out)
            if rest:
                self._extend_line(rest)
        except LimitExceeded as exc:
            # Nothing already decoded is lost: the events this chunk completed
            # before the bound was passed travel on the exception.
            exc.events = list(out)
            raise
        return out

    def _maybe_prelude(self, chunk: bytes) -> bytes | None:
        """Handle the rare states; the chunk left to parse, or None when nothing is."""
        if self._error is not None or self._closed:
            self._check_usable()
        if not chunk:
            return None
        if self._bom_pending is not None:
            # The spec's UTF-8 decode strips one leading BOM, even when it
            # arrives a byte at a time; hold bytes until that is decided.
            chunk = self._bom_pending + chunk
            if len(chunk) < 3 and _BOM.startswith(chunk):
                self._bom_pending = chunk
                return None
            self._bom_pending = None
            if chunk.startswith(_BOM):
                chunk = chunk[3:]
        if self._skip_lf and chunk:
            # CRLF split across chunks: the line already ended at the CR.
            self._skip_lf = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
        if self._skipping and chunk:
            # Discard the rest of a dropped line, up to and including its end.
            lf = chunk.find(b"\n")
            cr = chunk.find(b"\r", 0, len(chunk) if lf < 0 else lf)
            end = lf if cr < 0 else cr
            if end < 0:
                return None
            self._skipping = False
            if cr >= 0:
                if end + 1 == len(chunk):
                    self._skip_lf = True  # the CR ends the chunk: an LF may follow
                elif chunk[end + 1] == 0x0A:
                    end += 1
            chunk = chunk[end + 1 :]
        self._slow = self._skip_lf or self._skipping
        return chunk or None

    def _extend_line(self, piece: bytes) -> None:
        self._line += piece
        if len(self._line) > self._max:
            self._overflow()

    def _overflow(self) -> None:
        """The unterminated line passed the bound: start skipping it, or fail."""
        stand_in = self._maybe_stand_in(self._line)
        if stand_in is None:
            self._fail(LimitExceeded("line", len(self._line), self._max, "max_event_size"))
        # Interpret the line now (ignored: at most it marks the block as having
        # a field), then let go of it and discard the rest as it arrives.
        self._line = bytearray()
        self._process([stand_in], [])
        self._skipping = self._slow = True

    def _maybe_stand_in(self, line: bytes | bytearray) -> bytes | None:
        """For a line over the bound that is dropped (rule 1 of the class
        docstring), a short line the decoder ignores the same way; None for a
        line it keeps, which must raise.

        Its first min(N, 6) bytes decide as its first N would: a kept field
        name is at most five bytes, so six bytes without a colon already name
        another field, and a colon within them is the first one of the line.
        """
        head = bytes(line[: min(self._max, 6)])
        if head[0] == 0x3A:
            return None if self._comments else head
        name, colon, _ = head.partition(b":")
        if name in _KEPT if colon else any(kept.startswith(name) for kept in _KEPT):
            return None
        return head

    def close(self) -> list[T]:
        """End the stream. Returns [] : the spec drops an unterminated event.

        Check ``ended_mid_event`` to learn whether the stream was cut inside an
        event. The decoder cannot be fed afterwards (:class:`StateError`).
        """
        self._check_usable()
        self._closed = self._slow = True
        return []

    def _check_usable(self) -> None:
        if self._error is not None:
            raise StateError(
                f"this Decoder failed earlier ({self._error}); make a new Decoder"
            ) from self._error
        if self._closed:
            raise StateError("this Decoder is closed; make a new Decoder for a new stream")

    def _fail(self, error: LimitExceeded) -> NoReturn:
        self._error = error
        self._slow = True
        raise error

    def _process(self, lines: list[bytes], out: list[T]) -> None:
        # "Interpreting an event stream": one branch per kind of line. The
        # data buffer and dispatch are inlined and the data size kept in a
        # local: this loop is the hot path. ``_pending`` marks fields other
        # than data (event type, id, retry, unknown) seen in this block.
        data = self._data
        size = self._data_size
        limit = self._max
        for line in lines:
            if not line:
                # Empty line: dispatch the event. The last event ID is set
                # even for a block without data, which dispatches nothing.
                self._last_event_id = last_id = self._id_buffer
                if data:
                    raw = data[0] if len(data) == 1 else b"\n".join(data)
                    try:  # _decode, inlined: strict first, the same text when valid
                        text = raw.decode()
                    except UnicodeDecodeError:
                        text = raw.decode("utf-8", "replace")
                    if self._pending:
                        kind = self._event_type
                        event = _Building(
                            text, _decode(kind) if kind else "message", last_id, self._block_retry
                        )
                    else:
                        event = _Building(text, "message", last_id, None)
                    event.__class__ = Event  # type: ignore[assignment]
                    out.append(event)  # type: ignore[arg-type]
                    data.clear()  # the text is built: the same list serves the next event
                    size = 0
                if self._pending:
                    self._event_type = b""
                    self._block_retry = None
                    self._pending = False
            elif line[:6] == b"data: ":
                # Fast path for the common "data: " field (see _append_data).
                size += len(line) - 5
                if size > limit:
                    self._fail(LimitExceeded("event data", size, limit, "max_event_size"))
                data.append(line[6:])
            elif line[0] == 0x3A:
                # Line starts with a colon: a comment.
                if self._comments:
                    value = line[2:] if line[1:2] == b" " else line[1:]
                    out.append(Comment(text=_decode(value)))  # type: ignore[arg-type]
            elif line[:4] == b"id: ":
                # Fast path for "id: " (see _field): an id containing NUL is ignored.
                self._pending = True
                if 0 not in line:
                    self._id_buffer = _decode(line[4:])
            elif line[:7] == b"event: ":
                # Fast path for "event: " (see _field).
                self._pending = True
                self._event_type = line[7:]
            else:
                self._data_size = size
                colon = line.find(b":")
                if colon < 0:
                    # No colon: the whole line is the field name, the value is empty.
                    self._field(line, b"")
                else:
                    # Collect the value after the colon, dropping one leading space.
                    start = colon + 2 if line[colon + 1 : colon + 2] == b" " else colon + 1
                    self._field(line[:colon], line[start:])
                size = self._data_size
        self._data_size = size

    def _field(self, name: bytes, value: bytes) -> None:
        # "Process the field": names compare as exact bytes, which is the same
        # as comparing the decoded names (a U+FFFD never equals an ASCII name).
        if name == b"data":
            self._append_data(value)
            return
        self._pending = True  # any other field, even an unknown one, is in the block
        if name == b"event":
            self._event_type = value
        elif name == b"id":
            # An id containing NUL is ignored entirely.
            if 0 not in value:
                self._id_buffer = _decode(value)
        elif name == b"retry":
            # Only ASCII digits count (bytes.isdigit is ASCII-only); anything
            # else, "+5", " 5" or an empty value, is ignored.
            if value.isdigit():
                # Leading zeros never overflow; past 20 significant digits the
                # value is over MAX_RETRY without converting it.
                digits = value.lstrip(b"0")
                if len(digits) <= 20:
                    retry = int(digits) if digits else 0
                    if retry <= MAX_RETRY:
                        self._retry = self._block_retry = retry
        # Any other field name is ignored.

    def _append_data(self, value: bytes) -> None:
        self._data_size += len(value) + 1
        if self._data_size > self._max:
            self._fail(LimitExceeded("event data", self._data_size, self._max, "max_event_size"))
        self._data.append(value)


# -- The implementation in use -------------------------------------------------

#: The pure-Python Decoder above: the reference, and the fallback.
PureDecoder: Final = Decoder


def _maybe_compiled() -> type | None:
    """The compiled Decoder, when it was built and ``SSEKIT_PURE`` is not set; else None."""
    if os.environ.get("SSEKIT_PURE", "") not in ("", "0"):
        return None
    try:
        from ._compiled import Decoder as compiled
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}._cdecoder":
            raise
        return None  # not built: no C compiler when ssekit was installed
    except ImportError as exc:
        # Built, but it refused to load (see PyInit__cdecoder): say so, stay correct.
        warnings.warn(
            f"ssekit's compiled decoder did not load ({exc}); using the pure one",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    compiled.__doc__ = Decoder.__doc__
    return compiled


#: The compiled Decoder (ssekit/_cdecoder.c) when it is the one in use, else None.
CompiledDecoder: Final = _maybe_compiled()

#: Which Decoder ``ssekit.Decoder`` is: "compiled" when the C extension was built
#: (and ``SSEKIT_PURE`` is not set), else "pure". Both give the same results.
decoder_implementation: Final[Literal["compiled", "pure"]] = (
    "pure" if CompiledDecoder is None else "compiled"
)

if not TYPE_CHECKING and CompiledDecoder is not None:
    # Type checkers keep seeing the pure class above: its overloads are the API.
    Decoder = CompiledDecoder
    # Pickle finds a class by its qualified name: the pure one is now PureDecoder.
    PureDecoder.__qualname__ = "PureDecoder"
