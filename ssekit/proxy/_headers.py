"""Pure header rules: hop-by-hop stripping, Host and key injection, forwarding headers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from .._http import Headers, Origin, get_header, is_event_stream

__all__ = ("HOP_BY_HOP", "request_headers", "response_headers", "underscored")

# RFC 9110 7.6.1 (Connection and the fields it names), plus the classic
# hop-by-hop set of RFC 2616 13.5.1 that intermediaries still must drop.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
VIA: Final = b"1.1 ssekit"


def _own_length(headers: Headers) -> Headers:
    """``headers`` with each Content-Length written as the proxy's own decimal: the proxy
    writes the lengths it sends, never copies them (``0010`` read in C with base 0 is 8).
    The value was checked as digits when the message was read."""
    return [(k, b"%d" % int(v)) if k.lower() == b"content-length" else (k, v) for k, v in headers]


def underscored(headers: Iterable[tuple[bytes, bytes]]) -> int:
    """How many header fields have a ``_`` in their name (dropped unless allowed)."""
    return sum(1 for name, _ in headers if b"_" in name)


def _strip_hop_by_hop(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    headers = list(headers)
    named = {
        token.strip().lower()
        for key, value in headers
        if key.lower() == b"connection"
        for token in value.split(b",")
    }
    return [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP and k.lower() not in named]


def request_headers(
    headers: Iterable[tuple[bytes, bytes]],
    *,
    origin: Origin,
    client_addr: str,
    scheme: str = "http",
    api_key: str | None = None,
    strip_authorization: bool = False,
    underscores: bool = False,
) -> Headers:
    """Headers to send upstream for a client's request.

    Hop-by-hop fields go; ``Host`` becomes the upstream's; X-Forwarded-For,
    -Proto, -Host and Via are added (appending to what a client sent).
    ``api_key`` replaces the client's Authorization with ``Bearer <key>``;
    ``strip_authorization`` drops the client's (its token was the proxy's own).
    Names with ``_`` go unless ``underscores``: a CGI or WSGI origin reads
    ``X_Forwarded_For`` and ``X-Forwarded-For`` as one ``HTTP_X_FORWARDED_FOR``,
    so a client could forge what the proxy adds (nginx drops them by default).
    Content-Length is written anew, as in :func:`_own_length`.
    """
    headers = _strip_hop_by_hop(headers)
    host = get_header(headers, b"host") or b""
    forwarded_for = get_header(headers, b"x-forwarded-for")
    via = get_header(headers, b"via")
    # Expect is the proxy's to answer: it streams the body on as soon as it comes.
    drop = {b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"via"}
    drop.add(b"expect")
    if api_key is not None or strip_authorization:
        drop.add(b"authorization")
    out: Headers = [(b"host", origin.authority.encode("ascii"))]
    for k, v in headers:  # one pass: the per-request hot path
        low = k.lower()
        if low in drop or (not underscores and b"_" in k):
            continue
        out.append((k, b"%d" % int(v)) if low == b"content-length" else (k, v))
    out.append(
        (
            b"x-forwarded-for",
            forwarded_for + b", " + client_addr.encode() if forwarded_for else client_addr.encode(),
        )
    )
    out.append((b"x-forwarded-proto", scheme.encode()))
    if host:
        out.append((b"x-forwarded-host", host))
    out.append((b"via", via + b", " + VIA if via else VIA))
    if api_key is not None:
        out.append((b"authorization", b"Bearer " + api_key.encode()))
    return out


def response_headers(headers: Iterable[tuple[bytes, bytes]], status: int = 200) -> Headers:
    """Headers to send the client for an upstream response of ``status``: hop-by-hop
    gone, Via added.

    Content-Type, Content-Length, Content-Encoding, Cache-Control and the rest
    pass unchanged: the proxy neither adds nor removes compression. When the
    upstream sent Transfer-Encoding too, its Content-Length is dropped: the body
    was framed by the transfer coding (RFC 9112 6.3), and so is ours. A 1xx or
    204 response carries no Content-Length at all (RFC 9110 8.6: a server must
    not send one there; a client could take it for a body). A length that goes
    out is written anew (see :func:`_own_length`).
    """
    headers = list(headers)
    if get_header(headers, b"transfer-encoding") is not None or status < 200 or status == 204:
        headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    headers = _own_length(_strip_hop_by_hop(headers))
    via = get_header(headers, b"via")
    out = [(k, v) for k, v in headers if k.lower() != b"via"]
    out.append((b"via", via + b", " + VIA if via else VIA))
    content_type = get_header(headers, b"content-type") or b""
    if is_event_stream(content_type) and get_header(headers, b"x-accel-buffering") is None:
        # Tell a buffering relay in front of us (nginx) to pass the stream on live.
        out.append((b"x-accel-buffering", b"no"))
    return out
