"""The whole ssekit exception tree.

One root, :class:`SSEError`; below it, one family per party at fault (h11-style).
Callers only ever need to catch ssekit types: the I/O layers translate anyio,
``OSError`` and HTTP framing errors into these, chained, at one place each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._event import Comment, Event

__all__ = (
    "APIErrorEvent",
    "ChunkError",
    "ClientError",
    "ConfigError",
    "EncodeError",
    "InputTypeError",
    "LimitExceeded",
    "NotAnEventStream",
    "OpenAIStreamError",
    "ProxyError",
    "ResponseError",
    "RetriesExhausted",
    "SSEError",
    "StateError",
    "StreamIncomplete",
    "UpstreamError",
)


class SSEError(Exception):
    """Root of every exception ssekit raises on purpose.

    Every ssekit exception pickles (for multiprocessing and executors), even
    those whose constructor takes required arguments: they are rebuilt from
    their message and attributes without calling ``__init__`` again.
    """

    def __reduce__(self) -> tuple[object, ...]:
        # Exception's own __reduce__ calls cls(*self.args), and self.args is
        # only the message here: a class with required arguments would fail.
        return (_rebuild, (type(self), self.args), self.__dict__ or None)


def _rebuild(cls: type[SSEError], args: tuple[object, ...]) -> SSEError:
    """Unpickle an :class:`SSEError`: the instance, its args set, no ``__init__``."""
    return cls.__new__(cls, *args)


class StateError(SSEError, RuntimeError):
    """The caller used an object in a state that does not allow it.

    For example feeding a decoder after ``close()``, or after it raised.
    """


class LimitExceeded(SSEError):
    """The peer sent more than a configured bound allows.

    ``limit`` names the bound, ``size`` is how far the input got (at least
    ``maximum + 1``), ``maximum`` is the configured value and ``setting`` the
    parameter or option that raises it. ``events`` holds the events (and
    comments) the same ``feed()`` completed before the bound was passed, so
    nothing already decoded is lost.
    """

    def __init__(
        self,
        limit: str,
        size: int,
        maximum: int,
        setting: str,
        events: Sequence[Event | Comment] = (),
    ) -> None:
        self.limit = limit
        self.size = size
        self.maximum = maximum
        self.setting = setting
        #: What the failing ``feed()`` completed before the bound was passed.
        self.events: list[Event | Comment] = list(events)
        super().__init__(
            f"{limit} reached {size} bytes, over the limit of {maximum} bytes; "
            f"raise {setting} if such input is expected"
        )


class EncodeError(SSEError, ValueError):
    """The caller asked the encoder for something SSE cannot carry intact."""


class InputTypeError(SSEError, TypeError):
    """The caller passed a value of the wrong type (also a ``TypeError``); nothing changed.

    ``argument`` names the parameter and ``got`` the name of the type passed, as in
    ``Decoder().feed("text")`` (``argument="data"``, ``got="str"``: encode it first) or
    ``iter_events(b"...")`` (``argument="chunks"``, ``got="bytes"``: wrap it in a list).
    """

    def __init__(self, message: str, *, argument: str, got: str) -> None:
        self.argument = argument
        self.got = got
        super().__init__(message)


class NotAnEventStream(SSEError):
    """The bytes read as an event stream were a JSON document that dispatched no event.

    That is an API's error answer (a 401's ``{"error": {...}}``, say) read as a
    stream: the status was not checked. ``body`` is the document, decoded.
    """

    def __init__(self, message: str, body: str) -> None:
        self.body = body
        super().__init__(message)


class OpenAIStreamError(SSEError):
    """An OpenAI-style stream did not carry a complete, well-formed answer."""


class ChunkError(OpenAIStreamError):
    """An event's data was not a JSON object (and not the ``[DONE]`` sentinel)."""


class APIErrorEvent(OpenAIStreamError):
    """The stream carried an error object instead of (or after) chunks.

    ``error`` is the parsed ``error`` member (or the whole object).
    """

    def __init__(self, message: str, error: dict[str, object]) -> None:
        self.error = error
        super().__init__(message)


class StreamIncomplete(OpenAIStreamError):
    """The stream ended before the ``data: [DONE]`` sentinel: the answer was cut."""


class ProxyError(SSEError):
    """Root of the proxy's failures."""


class UpstreamError(ProxyError):
    """The upstream failed: connect, timeout, protocol, or cut mid-stream.

    ``status`` is the HTTP status to answer with if the response head has not
    gone out yet (502 for connect and protocol errors, 504 for timeouts).
    ``cut`` is True when the response body was cut after its head: closed early,
    malformed, or silent past the idle timeout (the answer is incomplete). The
    cause (``__cause__``) is chained when there is one: the ``OSError``, the
    framing error, or a :class:`LimitExceeded` for a head over its bound.
    """

    def __init__(self, message: str, status: int = 502, *, cut: bool = False) -> None:
        self.status = status
        self.cut = cut
        super().__init__(message)


class ConfigError(ProxyError, ValueError):
    """A command-line option or configuration value is invalid (CLI exit status 2)."""


class ClientError(SSEError):
    """Root of the SSE client's failures."""


class ResponseError(ClientError):
    """The server answered with something that is not an event stream.

    ``status``, ``content_type`` (the header as sent, "" when absent) and
    ``body`` (the first bytes, decoded) say what came back: an OpenAI JSON
    error is readable from ``body``.
    """

    def __init__(self, message: str, status: int, body: str = "", content_type: str = "") -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        super().__init__(message)


class RetriesExhausted(ClientError):
    """The client gave up reconnecting: ``max_retries`` or the ``deadline`` was reached.

    ``reconnections`` is how many reconnections in a row had failed (no event
    dispatched since) when it gave up: ``max_retries`` when that cap was the
    reason. Chained (``__cause__``) to the last connection's error, if there
    was one.
    """

    def __init__(self, message: str, reconnections: int = 0) -> None:
        self.reconnections = reconnections
        super().__init__(message)
