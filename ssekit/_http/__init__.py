"""HTTP/1.1 over anyio, shared by the proxy, the mock upstream and the client.

One interface, two engines behind it (``_engine``): ssekit's own, the default
(clients served with ``_server``'s connection state, origins spoken to with
``_wire``'s heads and ``_chunked``'s bodies, held to h11 by the tests), and h11
itself (``_h11``; ``ssekit proxy --http h11``), as uvicorn offers h11 and httptools.
The only place where anyio, ``OSError``, ssl, h11 and HTTP framing exceptions
become ssekit's.
"""

from ._chunked import frame_chunk, frame_chunks
from ._connection import (
    DEFAULT_MAX_HEAD_SIZE,
    READ_SIZE,
    OriginConnection,
    OriginPool,
    make_ssl_context,
    open_connection,
)
from ._downstream import (
    JSON,
    REASONS,
    BadRequest,
    ClientGone,
    Downstream,
    error_body,
    raw_response,
)
from ._engine import ENGINES, Engine, ServerSide, check_engine, server_connection
from ._headers import Headers, get_header, head_size, is_event_stream
from ._origin import Origin
from ._server import ServerConnection, Signal
from ._stream import FastStream, Stream, accept, close_now, on_asyncio
from ._wire import RequestHead, ResponseHead, WireError

__all__ = (
    "DEFAULT_MAX_HEAD_SIZE",
    "ENGINES",
    "JSON",
    "READ_SIZE",
    "REASONS",
    "BadRequest",
    "ClientGone",
    "Downstream",
    "Engine",
    "FastStream",
    "Headers",
    "Origin",
    "OriginConnection",
    "OriginPool",
    "RequestHead",
    "ResponseHead",
    "ServerConnection",
    "ServerSide",
    "Signal",
    "Stream",
    "WireError",
    "accept",
    "check_engine",
    "close_now",
    "error_body",
    "frame_chunk",
    "frame_chunks",
    "get_header",
    "head_size",
    "is_event_stream",
    "make_ssl_context",
    "on_asyncio",
    "open_connection",
    "raw_response",
    "server_connection",
)
