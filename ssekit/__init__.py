"""ssekit: Server-Sent Events for Python.

A sans-IO decoder exact to the WHATWG parsing algorithm for every split of the
input, an encoder that escapes every line break, and (in ``ssekit.proxy`` and
``ssekit.client``, which alone import anyio and h11) a streaming reverse proxy
and a reconnecting client.
"""

from ._decoder import DEFAULT_MAX_EVENT_SIZE, Decoder
from ._encoder import encode, encode_comment
from ._errors import (
    APIErrorEvent,
    ChunkError,
    ClientError,
    ConfigError,
    EncodeError,
    LimitExceeded,
    OpenAIStreamError,
    ProxyError,
    ResponseError,
    SSEError,
    StateError,
    StreamIncomplete,
    UpstreamError,
)
from ._event import Comment, Event
from ._iterate import aiter_events, iter_events
from ._openai import DONE, aiter_chunks, iter_chunks, join_deltas, parse_chunk
from ._writer import ByteSink, EventWriter

__version__ = "0.1.0"

__all__ = (
    "DEFAULT_MAX_EVENT_SIZE",
    "DONE",
    "APIErrorEvent",
    "ByteSink",
    "ChunkError",
    "ClientError",
    "Comment",
    "ConfigError",
    "Decoder",
    "EncodeError",
    "Event",
    "EventWriter",
    "LimitExceeded",
    "OpenAIStreamError",
    "ProxyError",
    "ResponseError",
    "SSEError",
    "StateError",
    "StreamIncomplete",
    "UpstreamError",
    "aiter_chunks",
    "aiter_events",
    "encode",
    "encode_comment",
    "iter_chunks",
    "iter_events",
    "join_deltas",
    "parse_chunk",
)

# Reprs and tracebacks read ssekit.Decoder, not ssekit._decoder.Decoder.
for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and callable(_obj):
        _obj.__module__ = __name__
del _name, _obj
