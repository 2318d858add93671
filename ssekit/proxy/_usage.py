"""What every stream cost: token usage and time to first token, read from what is forwarded.

The API shape comes from the request's path (``POST .../chat/completions``,
``.../responses``, ``.../messages``); anything else has usage ``none``. A
:class:`Meter` per exchange watches the events the proxy's tap already
decodes and parses JSON only for the few events that can carry what it wants:

    Chat Completions  every chunk until the first one with content (usually the
                      first two), then only a chunk whose ``"usage"`` key holds more
                      than null (a substring test finds it: ``"usage"`` inside a JSON
                      string is escaped, so cannot match)
    Responses         ``response.completed`` / ``.incomplete`` / ``.failed`` (by event
                      type; content deltas are known by type alone)
    Messages          ``message_start`` and ``message_delta`` (content by type alone)

A non-streamed JSON answer's ``usage`` is read from the bytes forwarded (kept up
to :data:`MAX_JSON_BODY`, references to chunks already read, never copies).
Counts are taken exactly as the provider reported them; a usage object whose
counts are not non-negative integers makes the exchange's usage ``invalid``.
Nothing here changes a byte of what is forwarded.

This module also keeps the per-process token counters (:class:`UsageCounters`,
summed across ``--workers`` like the others) and the ``--usage-log`` file.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from .._event import Event

if TYPE_CHECKING:
    from ._stats import StreamStats

__all__ = (
    "MAX_JSON_BODY",
    "Meter",
    "Shape",
    "UsageCounters",
    "UsageLog",
    "UsageSource",
    "add_include_usage",
    "key_labels",
    "shape_of",
)

log = logging.getLogger("ssekit.proxy")

#: The most bytes of a non-streamed JSON answer kept to read its usage (more: usage none).
MAX_JSON_BODY: Final = 4 * 1024 * 1024
#: Kinds of ``ssekit_tokens_total``, in the order they are rendered.
KINDS: Final = ("prompt", "completion", "cached", "reasoning")


class Shape(enum.Enum):
    """The API an exchange speaks, from its path."""

    CHAT = "chat"
    RESPONSES = "responses"
    MESSAGES = "messages"


class UsageSource(enum.Enum):
    """Where an exchange's token counts come from."""

    REPORTED = "reported"  # the provider said so, in the stream or the JSON body
    NONE = "none"  # nothing reported (not asked for, cut before it came, another API)
    INVALID = "invalid"  # a usage object with a non-integer or negative count


def shape_of(method: str, path: str) -> Shape | None:
    """The API shape of a request (only POSTs carry one), or None."""
    if method != "POST":
        return None
    path = path.rstrip("/")
    if path.endswith("/chat/completions"):
        return Shape.CHAT
    if path.endswith("/responses"):
        return Shape.RESPONSES
    if path.endswith("/messages"):
        return Shape.MESSAGES
    return None


def _count(usage: dict[str, Any], key: str) -> int | None:
    """A count as reported: None when absent or null; raises ValueError when it is not a
    non-negative integer (``True`` is not a count)."""
    value = usage.get(key)
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise ValueError(f"usage {key}={value!r} is not a non-negative integer")
    return value


def _detail(usage: dict[str, Any], outer: str, key: str) -> int | None:
    details = usage.get(outer)
    if details is None:
        return None
    if not isinstance(details, dict):
        raise ValueError(f"usage {outer} is not an object")
    return _count(details, key)


def _loads(data: str) -> dict[str, Any] | None:
    if not data.startswith("{"):
        return None
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


#: Responses API events that carry content (time to first token) and the final usage.
_RESPONSES_CONTENT: Final = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
    }
)
_RESPONSES_END: Final = frozenset({"response.completed", "response.incomplete", "response.failed"})


class Meter:
    """One exchange's usage and first token, written into its :class:`StreamStats`.

    ``see`` takes each event the tap decodes (the method for the shape; for
    Chat Completions it changes once the first token was seen). ``body`` is
    fed the chunks of a non-streamed answer; :meth:`close` reads them.
    """

    __slots__ = ("_body", "_body_size", "_clock", "_started", "see", "shape", "stats")

    def __init__(
        self, shape: Shape, stats: StreamStats, started: float, clock: Callable[[], float]
    ) -> None:
        self.shape = shape
        self.stats = stats
        self._started = started
        self._clock = clock
        self._body: list[bytes] | None = []
        self._body_size = 0
        self.see: Callable[[Event], None] = {
            Shape.CHAT: self._chat_first,
            Shape.RESPONSES: self._responses,
            Shape.MESSAGES: self._messages,
        }[shape]

    # -- streams --

    def _first_token(self) -> None:
        if self.stats.first_token is None:
            self.stats.first_token = self._clock() - self._started

    def _chat_first(self, event: Event) -> None:
        """Before the first token: each chunk is parsed (the role chunk, the first delta)."""
        obj = _loads(event.data)
        if obj is None:
            return
        self._model(obj.get("model"))
        choices = obj.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if isinstance(delta, dict) and (
                    delta.get("content") or delta.get("tool_calls") or delta.get("refusal")
                ):
                    self._first_token()
                    self.see = self._chat_rest
                    break
        if obj.get("usage") is not None:
            self._openai_usage(obj["usage"], chat=True)

    def _chat_rest(self, event: Event) -> None:
        """After the first token only a chunk with a usage object is parsed."""
        data = event.data
        # From the end: with include_usage every chunk ends in "usage":null (a short scan).
        at = data.rfind('"usage"')
        if at < 0:
            return
        end = len(data)
        at += 7
        while at < end and data[at] in " \t\r\n:":
            at += 1
        if at < end and data[at] != "n":  # an object (or a bad value), not null
            obj = _loads(data)
            if obj is not None:
                self._model(obj.get("model"))
                self._openai_usage(obj.get("usage"), chat=True)

    def _responses(self, event: Event) -> None:
        kind = event.event
        if kind in _RESPONSES_CONTENT:
            if self.stats.first_token is None:
                self._first_token()
        elif kind in _RESPONSES_END:
            obj = _loads(event.data)
            response = None if obj is None else obj.get("response")
            if isinstance(response, dict):
                self._model(response.get("model"))
                if response.get("usage") is not None:
                    self._openai_usage(response["usage"], chat=False)

    def _messages(self, event: Event) -> None:
        kind = event.event
        if kind == "content_block_delta":
            if self.stats.first_token is None:
                self._first_token()
        elif kind == "message_start":
            obj = _loads(event.data)
            message = None if obj is None else obj.get("message")
            if isinstance(message, dict):
                self._model(message.get("model"))
                if message.get("usage") is not None:
                    self._anthropic_usage(message["usage"], output=False)
        elif kind == "message_delta":
            obj = _loads(event.data)
            if obj is not None and obj.get("usage") is not None:
                self._anthropic_usage(obj["usage"], output=True)

    # -- non-streamed answers --

    def body(self, chunk: bytes) -> None:
        """A chunk of a non-streamed answer, kept (by reference) up to MAX_JSON_BODY."""
        if self._body is None:
            return
        self._body_size += len(chunk)
        if self._body_size > MAX_JSON_BODY:
            self._body = None
        else:
            self._body.append(chunk)

    def close(self) -> None:
        """Read the usage of a non-streamed JSON answer, when one was fed."""
        if not self._body:
            return
        raw, self._body = b"".join(self._body), None
        try:
            obj = json.loads(raw)
        except ValueError:
            return
        if not isinstance(obj, dict):
            return
        self._model(obj.get("model"))
        usage = obj.get("usage")
        if usage is None:
            return
        if self.shape is Shape.MESSAGES:
            self._anthropic_usage(usage, output=True)
        else:
            self._openai_usage(usage, chat=self.shape is Shape.CHAT)

    # -- what is read --

    def _model(self, model: object) -> None:
        if isinstance(model, str) and model:
            self.stats.model = model[:200]

    def _invalid(self) -> None:
        stats = self.stats
        stats.usage = UsageSource.INVALID
        stats.prompt_tokens = stats.completion_tokens = None
        stats.cached_tokens = stats.reasoning_tokens = None

    def _openai_usage(self, usage: object, *, chat: bool) -> None:
        """Chat: prompt_tokens, completion_tokens and their details; Responses:
        input_tokens, output_tokens and theirs."""
        if self.stats.usage is UsageSource.INVALID:
            return
        try:
            if not isinstance(usage, dict):
                raise ValueError("usage is not an object")
            if chat:
                counts = (
                    _count(usage, "prompt_tokens"),
                    _count(usage, "completion_tokens"),
                    _detail(usage, "prompt_tokens_details", "cached_tokens"),
                    _detail(usage, "completion_tokens_details", "reasoning_tokens"),
                )
            else:
                counts = (
                    _count(usage, "input_tokens"),
                    _count(usage, "output_tokens"),
                    _detail(usage, "input_tokens_details", "cached_tokens"),
                    _detail(usage, "output_tokens_details", "reasoning_tokens"),
                )
        except ValueError:
            self._invalid()
            return
        stats = self.stats
        stats.usage = UsageSource.REPORTED
        stats.prompt_tokens, stats.completion_tokens = counts[0], counts[1]
        stats.cached_tokens, stats.reasoning_tokens = counts[2], counts[3]

    def _anthropic_usage(self, usage: object, *, output: bool) -> None:
        """Input (with cache reads and writes: all the prompt) from ``message_start``,
        output from the last ``message_delta`` (cumulative; it may restate input too), or
        both from a whole message (``output``: its output_tokens is a count)."""
        if self.stats.usage is UsageSource.INVALID:
            return
        try:
            if not isinstance(usage, dict):
                raise ValueError("usage is not an object")
            fresh = _count(usage, "input_tokens")
            read = _count(usage, "cache_read_input_tokens")
            written = _count(usage, "cache_creation_input_tokens")
            completion = _count(usage, "output_tokens")
        except ValueError:
            self._invalid()
            return
        stats = self.stats
        stats.usage = UsageSource.REPORTED
        if fresh is not None or read is not None or written is not None:
            stats.prompt_tokens = (fresh or 0) + (read or 0) + (written or 0)
            stats.cached_tokens = read if read is not None else stats.cached_tokens
        if output and completion is not None:
            # message_start's output_tokens is a placeholder before any output: not a count.
            stats.completion_tokens = completion


def add_include_usage(body: bytes) -> bytes | None:
    """``--include-usage``: the Chat Completions request ``body`` with
    ``"stream_options": {"include_usage": true}`` added when it streams and lacks it
    (re-serialised); None when it is to pass unchanged (not a JSON object, not
    streaming, already set either way)."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("stream") is not True:
        return None
    options = obj.get("stream_options")
    if options is None:
        obj["stream_options"] = {"include_usage": True}
    elif isinstance(options, dict) and "include_usage" not in options:
        obj["stream_options"] = {**options, "include_usage": True}
    else:
        return None
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def request_model(body: bytes) -> str:
    """The ``model`` of a JSON request body, or ""."""
    try:
        obj = json.loads(body)
    except ValueError:
        return ""
    model = obj.get("model") if isinstance(obj, dict) else None
    return model[:200] if isinstance(model, str) else ""


def key_labels(names: Iterable[str | None], counts: Iterable[int], prefix: str) -> tuple[str, ...]:
    """One label per key, in order: a named variable's keys get its name (``NAME-2`` on
    for its second key on), an unnamed one's ``<prefix><position>`` (1-based, over all)."""
    labels: list[str] = []
    for name, count in zip(names, counts, strict=True):
        for i in range(count):
            if name is None:
                labels.append(f"{prefix}{len(labels) + 1}")
            else:
                labels.append(name if i == 0 else f"{name}-{i + 1}")
    return tuple(labels)


def _label(value: str) -> str:
    """A Prometheus label value, escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass(slots=True)
class UsageCounters:
    """Tokens by (kind, model, key) and exchanges by (usage source, outcome), per process.

    Models beyond ``max_models`` distinct ones are counted as ``other`` (the
    first ones seen keep their label; summed over workers, those with the most
    tokens do).
    """

    max_models: int = 50
    tokens: dict[tuple[str, str, str], int] = field(default_factory=dict)
    exchanges: dict[tuple[str, str], int] = field(default_factory=dict)
    log_errors: int = 0
    invalid_logged: bool = False
    _models: set[str] = field(default_factory=set)

    def model_label(self, model: str) -> str:
        model = model or "unknown"
        if model in self._models:
            return model
        if len(self._models) < self.max_models:
            self._models.add(model)
            return model
        return "other"

    def record(self, stats: StreamStats) -> None:
        if stats.shape is None:
            return
        source = stats.usage.value
        key = (source, stats.outcome.value)
        self.exchanges[key] = self.exchanges.get(key, 0) + 1
        if stats.usage is not UsageSource.REPORTED:
            return
        model = self.model_label(stats.model)
        label = stats.key_label or "none"
        for kind, count in zip(
            KINDS,
            (
                stats.prompt_tokens,
                stats.completion_tokens,
                stats.cached_tokens,
                stats.reasoning_tokens,
            ),
            strict=True,
        ):
            if count:
                at = (kind, model, label)
                self.tokens[at] = self.tokens.get(at, 0) + count

    def snapshot(self) -> dict[str, object]:
        return {
            "tokens": [[*k, n] for k, n in self.tokens.items()],
            "exchanges": [[*k, n] for k, n in self.exchanges.items()],
            "log_errors": self.log_errors,
        }

    def plus(self, snapshots: Iterable[dict[str, Any]]) -> UsageCounters:
        total = UsageCounters(
            max_models=self.max_models,
            tokens=dict(self.tokens),
            exchanges=dict(self.exchanges),
            log_errors=self.log_errors,
        )
        for snap in snapshots:
            for kind, model, key, n in snap.get("tokens", ()):
                at = (kind, model, key)
                total.tokens[at] = total.tokens.get(at, 0) + n
            for source, outcome, n in snap.get("exchanges", ()):
                total.exchanges[(source, outcome)] = total.exchanges.get((source, outcome), 0) + n
            total.log_errors += snap.get("log_errors", 0)
        per_model: dict[str, int] = {}
        for (_, model, _), n in total.tokens.items():
            per_model[model] = per_model.get(model, 0) + n
        if len(per_model) > total.max_models:  # bound the sum too: the biggest keep a label
            ranked = sorted((m for m in per_model if m != "other"), key=lambda m: -per_model[m])
            keep = set(ranked[: max(0, total.max_models - 1)])
            folded: dict[tuple[str, str, str], int] = {}
            for (kind, model, key), n in total.tokens.items():
                at = (kind, model if model in keep else "other", key)
                folded[at] = folded.get(at, 0) + n
            total.tokens = folded
        return total

    def render(self, usage_log: bool) -> list[str]:
        lines = [
            "# HELP ssekit_tokens_total Tokens the provider reported, by kind, model and "
            "upstream key label (cached is part of prompt, reasoning of completion).",
            "# TYPE ssekit_tokens_total counter",
            *(
                f'ssekit_tokens_total{{kind="{kind}",model="{_label(model)}",key="{_label(key)}"}}'
                f" {n}"
                for (kind, model, key), n in sorted(self.tokens.items())
            ),
            "# HELP ssekit_usage_exchanges_total Exchanges on the LLM API paths, by where "
            "their usage came from and how they ended.",
            "# TYPE ssekit_usage_exchanges_total counter",
            *(
                f'ssekit_usage_exchanges_total{{usage="{source}",outcome="{outcome}"}} {n}'
                for (source, outcome), n in sorted(self.exchanges.items())
            ),
        ]
        if usage_log:
            lines += [
                "# HELP ssekit_usage_log_errors_total Usage log lines that could not be written.",
                "# TYPE ssekit_usage_log_errors_total counter",
                f"ssekit_usage_log_errors_total {self.log_errors}",
            ]
        return lines


def usage_record(stats: StreamStats) -> dict[str, object]:
    """One ``--usage-log`` line's fields."""
    from ._stats import utc_time

    def ms(seconds: float | None) -> float | None:
        return None if seconds is None else round(seconds * 1000, 2)

    return {
        "time": utc_time(stats.arrived),
        "request_id": stats.request_id,
        "key": stats.key_label or None,
        "client_token": stats.client_label or None,
        "method": stats.method,
        "path": stats.path,
        "status": stats.status,
        "model": stats.model or None,
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "cached_tokens": stats.cached_tokens,
        "reasoning_tokens": stats.reasoning_tokens,
        "usage": stats.usage.value,
        "outcome": stats.outcome.value,
        "partial": stats.partial,
        "events": stats.events,
        "events_delivered": stats.events_delivered,
        "first_token_ms": ms(stats.first_token),
        "duration_ms": ms(stats.duration),
        "stream_id": stats.stream_id or None,
    }


def new_request_id() -> str:
    return secrets.token_hex(8)


class UsageLog:
    """``--usage-log``: one JSON line per exchange, appended in one write each.

    ``-`` is stdout. :meth:`reopen` (on SIGHUP) opens the path again, for log
    rotation. A failed write or open is counted and logged (once per run of
    failures) and never raises: streaming goes on.
    """

    def __init__(self, path: str, counters: UsageCounters, log_format: str) -> None:
        self.path = path
        self._counters = counters
        self._log_format = log_format
        self._fd: int | None = None
        self._failing = False
        self.reopen()

    def reopen(self) -> None:
        if self.path == "-":
            self._fd = 1
            return
        old, self._fd = self._fd, None
        if old is not None:
            try:
                os.close(old)
            except OSError:
                pass
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as exc:
            self._failed(exc)

    def write(self, record: dict[str, object]) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        if self._fd is None:
            self._failed(None)
            return
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(f"short write: {written} of {len(line)} bytes")
        except OSError as exc:
            self._failed(exc)
            return
        self._failing = False

    def _failed(self, exc: OSError | None) -> None:
        self._counters.log_errors += 1
        if self._failing:
            return
        self._failing = True
        from ._stats import report

        reason = "it could not be opened" if exc is None else str(exc)
        report(
            logging.ERROR,
            f"ssekit: usage log {self.path}: {reason}; lines are lost (counted in "
            "ssekit_usage_log_errors_total) until a write succeeds; streaming goes on",
            {"notice": "usage_log_failed", "path": self.path, "reason": reason},
            as_json=self._log_format == "json",
        )

    def close(self) -> None:
        if self._fd is not None and self._fd != 1:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = None
