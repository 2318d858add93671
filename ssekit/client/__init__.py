"""A reconnecting SSE client (anyio), exact to the EventSource's reconnection rules.

Importing this package imports anyio; ``import ssekit`` does not. It
reuses the proxy's HTTP/1.1 upstream code; it is not a second HTTP client.
"""

from ._connect import (
    MAX_REDIRECTS,
    EventListener,
    EventStream,
    chat_chunks,
    chat_text,
    connect,
    listen,
    stream_sync,
)
from ._policy import CREDENTIAL_HEADERS, Decision, Reconnector, RetryPolicy, Verdict

__all__ = (
    "CREDENTIAL_HEADERS",
    "MAX_REDIRECTS",
    "Decision",
    "EventListener",
    "EventStream",
    "Reconnector",
    "RetryPolicy",
    "Verdict",
    "chat_chunks",
    "chat_text",
    "connect",
    "listen",
    "stream_sync",
)
