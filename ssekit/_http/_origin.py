"""Origin: where an HTTP connection goes (scheme, host, port, path prefix)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from .._errors import ConfigError

__all__ = ("Origin",)


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
