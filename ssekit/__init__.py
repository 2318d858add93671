"""ssekit: Server-Sent Events for Python.

A sans-IO decoder exact to the WHATWG parsing algorithm for every split of the
input, an encoder that escapes every line break, and (in ``ssekit.proxy`` and
``ssekit.client``, which alone import anyio) a streaming reverse proxy
and a reconnecting client.

The names below live in private modules (``ssekit._decoder`` and so on) and
are re-exported here, as h11 does; their ``__module__`` is left alone so that
``inspect.getsource`` and debuggers find them. ``ssekit.openai`` is public: the
OpenAI-style helpers, also re-exported here.

``Decoder`` is compiled (ssekit/_cdecoder.c) when the extension was built at
install time, else the pure-Python one; ``decoder_implementation`` says which,
and ``SSEKIT_PURE=1`` forces the pure one. Both give the same results.
"""

from ._decoder import DEFAULT_MAX_EVENT_SIZE, MAX_RETRY, Decoder, decoder_implementation
from ._encoder import encode, encode_comment, encode_fields
from ._errors import (
    APIErrorEvent,
    ChunkError,
    ClientError,
    ConfigError,
    EncodeError,
    InputTypeError,
    LimitExceeded,
    NotAnEventStream,
    OpenAIStreamError,
    ProxyError,
    ResponseError,
    RetriesExhausted,
    SSEError,
    StateError,
    StreamIncomplete,
    UpstreamError,
)
from ._event import Comment, Event
from ._iterate import aiter_events, iter_events
from ._writer import ByteSink, EventWriter
from .openai import DONE, aiter_chunks, iter_chunks, join_deltas, parse_chunk

__version__ = "0.1.0"

__all__ = (
    "DEFAULT_MAX_EVENT_SIZE",
    "DONE",
    "MAX_RETRY",
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
    "aiter_chunks",
    "aiter_events",
    "decoder_implementation",
    "encode",
    "encode_comment",
    "encode_fields",
    "iter_chunks",
    "iter_events",
    "join_deltas",
    "parse_chunk",
)
