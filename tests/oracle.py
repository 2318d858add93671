"""A literal transcription of the WHATWG event-stream algorithm, over the whole input.

https://html.spec.whatwg.org/multipage/server-sent-events.html#parsing-an-event-stream
Deliberately naive and separate from ssekit's decoder: decode everything, strip
one BOM, split lines, then run "Interpreting an event stream" step by step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ssekit import Comment, Event

MAX_RETRY = 2**64 - 1


KEPT_FIELDS = ("data", "event", "id", "retry")


@dataclass
class Outcome:
    items: list[Event | Comment] = field(default_factory=list)
    last_event_id: str = ""
    reconnection_time: int | None = None
    #: The ``LimitExceeded.limit`` the decoder must raise ("line", "event data"),
    #: ``items`` then being what came before the offending line; else None.
    error: str | None = None

    @property
    def events(self) -> list[Event]:
        return [item for item in self.items if isinstance(item, Event)]


def is_kept(head: str, comments: bool) -> bool:
    """ssekit's bound rule: must a line whose first max_event_size bytes are ``head`` be held?

    Dropped, so never held: a comment when comments are not returned, a field
    whose name (before a colon in ``head``) is none of the four the spec
    interprets, or, with no colon in ``head``, a name that does not begin any
    of them (it runs on past ``head``).
    """
    if head.startswith(":"):
        return comments
    if ":" in head:
        return head.split(":", 1)[0] in KEPT_FIELDS
    return any(name.startswith(head) for name in KEPT_FIELDS)


def parse(stream: bytes, *, comments: bool = True, max_event_size: int | None = None) -> Outcome:
    """Everything a spec EventSource would dispatch for ``stream``, then closed.

    With ``max_event_size``, also where ssekit's documented bound stops it
    (a bound the spec leaves to implementations): see ``Outcome.error``.
    """
    # "UTF-8 decode": replacement for invalid sequences, one leading BOM stripped.
    text = stream.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
        stream = stream[3:]
    # end-of-line = ( cr lf / cr / lf ); the last piece has no end-of-line.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    # The bound counts bytes: the same split over the bytes. CR and LF are
    # ASCII and never part of a UTF-8 sequence, so both splits agree line for
    # line (and, after a colon, value for value).
    raw_lines = stream.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    assert len(raw_lines) == len(lines)
    out = Outcome()
    data_buffer = ""
    data_size = 0  # bytes: the data values plus one LF per data line
    event_type = ""
    last_event_id_buffer = ""
    block_retry: int | None = None
    for line, raw in zip(lines[:-1], raw_lines[:-1], strict=True):
        if max_event_size is not None and len(raw) > max_event_size:
            head = raw[:max_event_size].decode("latin-1")  # only ASCII matters here
            if is_kept(head, comments):
                out.error = "line"
                return out
            continue  # a dropped line: ignored, whatever its length
        if line == "":
            # Dispatch the event.
            out.last_event_id = last_event_id_buffer
            data_size = 0
            if data_buffer == "":
                event_type = ""
                block_retry = None
                continue
            if data_buffer.endswith("\n"):
                data_buffer = data_buffer[:-1]
            out.items.append(
                Event(
                    data=data_buffer,
                    event=event_type or "message",
                    id=last_event_id_buffer,
                    retry=block_retry,
                )
            )
            data_buffer = ""
            event_type = ""
            block_retry = None
        elif line.startswith(":"):
            if comments:
                value = line[1:]
                out.items.append(Comment(text=value[1:] if value.startswith(" ") else value))
        else:
            if ":" in line:
                name, value = line.split(":", 1)
                if value.startswith(" "):
                    value = value[1:]
            else:
                name, value = line, ""
            if name == "event":
                event_type = value
            elif name == "data":
                data_buffer += value + "\n"
                raw_value = raw.split(b":", 1)[1] if b":" in raw else b""
                data_size += len(raw_value.removeprefix(b" ")) + 1
                if max_event_size is not None and data_size > max_event_size:
                    out.error = "event data"
                    return out
            elif name == "id":
                if "\0" not in value:
                    last_event_id_buffer = value
            elif name == "retry":
                if value != "" and all(c in "0123456789" for c in value):
                    # The spec's integer is unbounded; ssekit ignores values
                    # over 2**64 - 1 as Chromium does (documented deviation).
                    # Counting digits first keeps int() off huge values.
                    significant = value.lstrip("0") or "0"
                    if len(significant) <= 20 and int(significant) <= MAX_RETRY:
                        out.reconnection_time = int(significant)
                        block_retry = int(significant)
    # The unterminated last line is never interpreted, but is held meanwhile.
    tail = raw_lines[-1]
    if max_event_size is not None and len(tail) > max_event_size:
        if is_kept(tail[:max_event_size].decode("latin-1"), comments):
            out.error = "line"
    return out
