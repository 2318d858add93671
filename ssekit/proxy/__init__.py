"""The ssekit reverse proxy (anyio, its own HTTP/1.1): forwards streams unchanged, handles faults.

Importing this package imports anyio; ``import ssekit`` does not.
"""

from .._http import Origin
from ._config import ProxyConfig
from ._listener import Proxy, serve
from ._mock import MockConfig, mock_text, serve_mock
from ._mock_apis import MockUsage, mock_usage
from ._stats import Outcome, StreamStats

__all__ = (
    "MockConfig",
    "MockUsage",
    "Origin",
    "Outcome",
    "Proxy",
    "ProxyConfig",
    "StreamStats",
    "mock_text",
    "mock_usage",
    "serve",
    "serve_mock",
)
