"""A literal transcription of the WHATWG event-stream algorithm, over the whole input.

https://html.spec.whatwg.org/multipage/server-sent-events.html#parsing-an-event-stream
Deliberately naive and separate from ssekit's decoder: decode everything, strip
one BOM, split lines, then run "Interpreting an event stream" step by step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ssekit import Comment, Event

MAX_RETRY = 2**64 - 1


@dataclass
class Outcome:
    items: list[Event | Comment] = field(default_factory=list)
    last_event_id: str = ""
    reconnection_time: int | None = None

    @property
    def events(self) -> list[Event]:
        return [item for item in self.items if isinstance(item, Event)]


def parse(stream: bytes) -> Outcome:
    """Everything a spec EventSource would dispatch for ``stream``, then closed."""
    # "UTF-8 decode": replacement for invalid sequences, one leading BOM stripped.
    text = stream.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    # end-of-line = ( cr lf / cr / lf ); the last piece has no end-of-line.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")[:-1]
    out = Outcome()
    data_buffer = ""
    event_type = ""
    last_event_id_buffer = ""
    block_retry: int | None = None
    for line in lines:
        if line == "":
            # Dispatch the event.
            out.last_event_id = last_event_id_buffer
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
    return out
