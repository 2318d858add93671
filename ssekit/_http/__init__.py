"""HTTP/1.1 over anyio and h11, shared by the proxy, the mock upstream and the client.

The only place where anyio, ``OSError``, ssl and h11 exceptions become ssekit's.
"""

from ._chunked import frame_chunk
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
from ._stream import FastStream, Stream, accept, close_now, on_asyncio

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
    "Stream",
    "accept",
    "close_now",
    "error_body",
    "frame_chunk",
    "get_header",
    "head_size",
    "is_event_stream",
    "make_ssl_context",
    "on_asyncio",
    "open_connection",
    "raw_response",
)
