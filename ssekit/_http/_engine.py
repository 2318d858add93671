"""Which HTTP/1.1 engine speaks on a connection: ssekit's own (the default) or h11.

``ssekit proxy --http h11`` runs both sides of the proxy (its clients and its
upstream connections) and the mock upstream on h11, as uvicorn offers
``--http h11|httptools``: one interface, two engines behind it. Code above
``_http`` passes the engine's name through and never learns which one runs.

The server side's interface is :class:`ServerSide` (what
:class:`~ssekit._http._server.ServerConnection` and
:class:`~ssekit._http._h11.H11ServerConnection` both offer); the origin side's is
:class:`~ssekit._http._connection.OriginConnection` itself, which takes the engine
as a keyword. h11 is imported only when it is chosen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Literal, Protocol, TypeAlias

from .._errors import ConfigError
from ._headers import Headers
from ._server import ServerConnection, Signal
from ._wire import RequestHead

if TYPE_CHECKING:
    from ._h11 import H11Origin

__all__ = ("ENGINES", "Engine", "ServerSide", "check_engine", "origin_engine", "server_connection")

#: The HTTP/1.1 engines, the default first: ssekit's own, and h11 (the reference).
ENGINES: Final = ("ssekit", "h11")
Engine: TypeAlias = Literal["ssekit", "h11"]


def check_engine(engine: str) -> Engine:
    """``engine`` when it names an HTTP/1.1 engine; else :class:`ConfigError` saying which do."""
    if engine == "ssekit":
        return "ssekit"
    if engine == "h11":
        return "h11"
    raise ConfigError(f"HTTP engine {engine!r} is not one of {', '.join(ENGINES)} (--http)")


class ServerSide(Protocol):
    """One client connection's HTTP/1.1 state, whichever engine keeps it.

    Every member means what it means on :class:`ServerConnection`, where each is
    described; :class:`~ssekit._http._h11.H11ServerConnection` has the same.
    """

    @property
    def max_head_size(self) -> int: ...
    @property
    def request(self) -> RequestHead | None: ...
    @property
    def their_http_version(self) -> bytes | None: ...
    @property
    def keep_alive(self) -> bool: ...
    @property
    def waiting_for_100(self) -> bool: ...
    @property
    def request_done(self) -> bool: ...
    @property
    def response_done(self) -> bool: ...
    @property
    def has_data(self) -> bool: ...
    @property
    def sending_body(self) -> bool: ...
    @property
    def chunked(self) -> bool: ...
    @property
    def reusable(self) -> bool: ...
    def receive_data(self, data: bytes) -> None: ...
    def next_event(self) -> RequestHead | bytes | Signal: ...
    def send_informational(self, status: int, headers: Headers, reason: bytes = b"") -> bytes: ...
    def send_response(self, status: int, headers: Headers, reason: bytes = b"") -> bytes: ...
    def send_data(self, data: bytes) -> bytes: ...
    def send_end(self) -> bytes: ...
    def start_next_cycle(self) -> None: ...


def server_connection(engine: str, max_head_size: int, max_fields: int | None = None) -> ServerSide:
    """A new client connection's HTTP/1.1 state on ``engine`` (a head still incomplete past
    ``max_head_size`` bytes, or with more than ``max_fields`` field lines, is a 431).
    Raises :class:`ConfigError` for an unknown engine."""
    if check_engine(engine) == "h11":
        from ._h11 import H11ServerConnection

        return H11ServerConnection(max_head_size, max_fields)
    return ServerConnection(max_head_size, max_fields)


def origin_engine(engine: str, max_head_size: int) -> H11Origin | None:
    """The sans-IO h11 state an origin connection speaks through, or None for ssekit's own
    (``OriginConnection`` calls ``_wire`` and ``_chunked`` itself then: no indirection on
    its hot path). Raises :class:`ConfigError` for an unknown engine."""
    if check_engine(engine) == "h11":
        from ._h11 import H11Origin

        return H11Origin(max_head_size)
    return None
