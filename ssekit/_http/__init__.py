"""HTTP/1.1 over anyio, shared by the proxy, the mock upstream and the client.

Clients are served with ``_server``'s connection state, origins spoken to with
``_wire``'s heads: HTTP/1.1 of our own, held to h11 by the tests.
The only place where anyio, ``OSError``, ssl and HTTP framing exceptions become ssekit's.
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
from ._headers import Headers, get_header, head_size, is_event_stream
from ._origin import Origin
from ._server import ServerConnection, Signal
from ._stream import FastStream, Stream, accept, close_now, on_asyncio
from ._wire import RequestHead, ResponseHead, WireError

__all__ = (
    "DEFAULT_MAX_HEAD_SIZE",
    "JSON",
    "READ_SIZE",
    "REASONS",
    "BadRequest",
    "ClientGone",
    "Downstream",
    "FastStream",
    "Headers",
    "Origin",
    "OriginConnection",
    "OriginPool",
    "RequestHead",
    "ResponseHead",
    "ServerConnection",
    "Signal",
    "Stream",
    "WireError",
    "accept",
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
)
