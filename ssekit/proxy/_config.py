"""ProxyConfig: the upstream, the listen address, every timeout and limit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from .._errors import ConfigError

__all__ = ("Origin", "ProxyConfig")


@dataclass(frozen=True, slots=True, kw_only=True)
class Origin:
    """Where requests go: scheme, host, port and the path prefix of a URL."""

    scheme: Literal["http", "https"]
    host: str
    port: int
    base_path: str = ""

    @classmethod
    def from_url(cls, url: str) -> Origin:
        """Parse ``http(s)://host[:port][/prefix]``; raise :class:`ConfigError` otherwise."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"upstream URL {url!r} is not http(s)://host[:port][/prefix]; "
                "give e.g. https://api.openai.com"
            )
        if parts.query or parts.fragment or parts.username:
            raise ConfigError(
                f"upstream URL {url!r} has a query, fragment or credentials; give only "
                "scheme, host, port and path prefix (keys go in --api-key-env)"
            )
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError as exc:
            raise ConfigError(f"upstream URL {url!r} has an invalid port") from exc
        return cls(
            scheme="https" if scheme == "https" else "http",
            host=parts.hostname,
            port=port,
            base_path=parts.path.rstrip("/"),
        )

    @property
    def authority(self) -> str:
        """``host[:port]`` as the Host header says it (default ports left out)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyConfig:
    """Everything the proxy needs, validated at construction.

    Times are in seconds. ``heartbeat=None`` keeps the proxy byte-transparent.
    Raises :class:`ConfigError` naming the bad value.
    """

    upstream: str
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    connect_timeout: float = 10.0
    first_byte_timeout: float = 60.0
    idle_timeout: float = 300.0
    header_timeout: float = 10.0
    retries: int = 2
    retry_backoff: float = 0.1
    heartbeat: float | None = None
    error_event: bool = False
    api_keys: tuple[str, ...] = ()
    client_tokens: tuple[str, ...] = ()
    upstream_ca: str | None = None
    upstream_proxy: str | None = None
    admin_prefix: str = "/_ssekit"
    drain_timeout: float = 10.0
    max_header_size: int = 64 * 1024
    pool_size: int = 32
    max_connections: int = 1024
    log_format: Literal["text", "json"] = "text"

    def __post_init__(self) -> None:
        self.origin  # noqa: B018 -- parse now, so a bad URL fails at start-up
        if self.upstream_proxy is not None:
            proxy = Origin.from_url(self.upstream_proxy)
            if proxy.scheme != "http":
                raise ConfigError(
                    f"upstream proxy {self.upstream_proxy!r} must be http://host:port "
                    "(an HTTP CONNECT proxy)"
                )
        for name in ("connect_timeout", "first_byte_timeout", "idle_timeout", "header_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be a positive number of seconds")
        if self.heartbeat is not None and not self.heartbeat > 0:
            raise ConfigError("heartbeat must be a positive number of seconds, or None for off")
        if self.retries < 0 or self.retry_backoff < 0 or self.drain_timeout < 0:
            raise ConfigError("retries, retry_backoff and drain_timeout must not be negative")
        if not 0 <= self.listen_port <= 65535:
            raise ConfigError(f"listen port {self.listen_port} is not in 0-65535")
        if self.max_header_size < 1024 or self.pool_size < 0 or self.max_connections < 1:
            raise ConfigError("max_header_size >= 1024, pool_size >= 0, max_connections >= 1")
        if not self.admin_prefix.startswith("/") or self.admin_prefix.endswith("/"):
            raise ConfigError(
                f"admin prefix {self.admin_prefix!r} must start with / and not end with /"
            )
        if any(not key or any(c in key for c in "\r\n") for key in self.api_keys):
            raise ConfigError("API keys must be non-empty single-line strings")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log format {self.log_format!r} is not text or json")

    @property
    def origin(self) -> Origin:
        return Origin.from_url(self.upstream)

    @property
    def proxy_origin(self) -> Origin | None:
        return None if self.upstream_proxy is None else Origin.from_url(self.upstream_proxy)
