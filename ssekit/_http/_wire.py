"""HTTP/1.1 heads and framing, sans-IO: request heads out and response heads in towards
the origin, request heads in from clients (for ``_server``).

:class:`OriginConnection` speaks to its origin with these instead of h11,
which cost about 45 us per exchange there (building, validating and parsing
the heads through its state machine) for a side whose every step the
connection already orders: one request, then its response. The rules are
h11's, which are RFC 9112's (``tests/test_wire.py`` and ``tests/test_server.py``
hold the parsers to h11 on generated heads): a start line ``HTTP/x.y NNN reason``
or ``METHOD target HTTP/x.y``, header fields as ``token ":" OWS value OWS``,
obsolete line folds joined with a space, lines ending in CRLF or LF, one
Content-Length value, and no transfer coding but ``chunked``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from ._headers import Headers

__all__ = (
    "FRAMING_FIELDS",
    "RequestHead",
    "ResponseHead",
    "WireError",
    "body_framing",
    "check_length",
    "check_request",
    "check_request_lines",
    "check_trailer_line",
    "check_trailer_name",
    "checked_fields",
    "declared_framing",
    "framing_checked",
    "has_blank_line",
    "keep_alive",
    "parse_request_head",
    "parse_response_head",
    "request_head",
    "screen_request_head",
)

# RFC 9110 5.1, 5.5 and RFC 9112 3, 4, 5 (as h11's _abnf spells them).
_TOKEN: Final = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_FIELD_VCHAR: Final = rb"[^\x00\s]"
_FIELD_VALUE: Final = rb"(?:%s+(?:[ \t]+%s+)*)?" % (_FIELD_VCHAR, _FIELD_VCHAR)
_NAME_RE: Final = re.compile(_TOKEN)
_VALUE_RE: Final = re.compile(_FIELD_VALUE)
_TARGET_RE: Final = re.compile(rb"[\x21-\x7e]+")
_FIELD_RE: Final = re.compile(rb"(%s):[ \t]*(%s)[ \t]*" % (_TOKEN, _FIELD_VALUE))
_STATUS_RE: Final = re.compile(
    rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: ((?:[ \t]|%s)*))?" % _FIELD_VCHAR
)
_REQUEST_RE: Final = re.compile(rb"(%s) ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])" % _TOKEN)
_BLANK_LINE: Final = re.compile(rb"\n\r?\n")
_LENGTH_RE: Final = re.compile(rb"[0-9]+")
# uri-host [":" port] (RFC 3986 3.2.2, 3.2.3): an IP literal in brackets, or a reg-name
# or IPv4 address of unreserved characters, sub-delims and %XX escapes; an empty host
# is allowed (a target without authority).
_HOST_RE: Final = re.compile(
    rb"(?:\[[0-9A-Za-z._~!$&'()*+,;=:-]+\]|(?:[0-9A-Za-z._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*)"
    rb"(?::[0-9]*)?"
)
#: The fields that frame a message body (RFC 9112 6).
FRAMING_FIELDS: Final = frozenset({b"content-length", b"transfer-encoding"})
#: Content-Length digits accepted (h11's bound: about 10**20 bytes).
MAX_LENGTH_DIGITS: Final = 20


class WireError(Exception):
    """A head that breaks HTTP/1.1's rules: malformed, or framed in a way not supported.

    ``status`` is the answer a server gives a client that sent it: 400, or 431 for a
    head (or trailer section) past a configured bound.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A parsed request head; header names lower-cased, values as sent (OWS stripped)."""

    method: bytes
    target: bytes
    http_version: bytes
    headers: Headers


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A parsed response head; header names lower-cased, values as sent (OWS stripped)."""

    status_code: int
    reason: bytes
    http_version: bytes
    headers: Headers


def request_head(method: str, target: str, headers: Headers) -> bytes:
    """The bytes of a request head, after checking every part is well-formed HTTP/1.1.

    Raises :class:`WireError` for a method that is not a token, a target with
    whitespace or control bytes, a header field that could not be read back
    as sent (a CR or LF in a value would start a field of its own), or not
    exactly one Host field.
    """
    try:
        method_bytes = method.encode("ascii")
        target_bytes = target.encode("ascii")
    except UnicodeEncodeError:
        raise WireError(f"request method and target must be ASCII: {method} {target}") from None
    if not _NAME_RE.fullmatch(method_bytes):
        raise WireError(f"illegal request method {method!r}")
    if not _TARGET_RE.fullmatch(target_bytes):
        raise WireError(f"illegal request target {target!r}")
    host = b""
    lines = []
    for name, value in headers:
        _check_field(name, value)
        if name.lower() == b"host":
            if host:
                raise WireError("a request needs exactly one Host header field, not several")
            host = b"%s: %s\r\n" % (name, value)
        else:
            lines.append(b"%s: %s\r\n" % (name, value))
    if not host:
        raise WireError("a request needs a Host header field (RFC 9112 3.2)")
    # Host first after the request line, as RFC 9112 3.2 asks of a user agent.
    lines[:0] = [b"%s %s HTTP/1.1\r\n" % (method_bytes, target_bytes), host]
    lines.append(b"\r\n")
    return b"".join(lines)


def checked_fields(headers: Headers) -> Headers:
    """``headers`` as a new list, after checking each field could be read back as sent
    (a CR or LF in a value would start a field of its own), with h11's rules for the
    framing fields (one Content-Length, no transfer coding but chunked)."""
    for name, value in headers:
        _check_field(name, value)
    return framing_checked(headers)


def _check_field(name: bytes, value: bytes) -> None:
    if not _NAME_RE.fullmatch(name):
        raise WireError(f"illegal header name {name!r}")
    if not _VALUE_RE.fullmatch(value):
        raise WireError(f"illegal header value {value!r}")


def declared_framing(headers: Headers) -> tuple[bool, int | None]:
    """Whether a message's body goes chunked, else its Content-Length (None: not given)."""
    chunked = False
    length = None
    for name, value in headers:
        name = name.lower()
        if name == b"transfer-encoding":
            if value.strip().lower() != b"chunked":
                raise WireError(f"transfer coding {value!r} is not supported (only chunked)")
            chunked = True
        elif name == b"content-length":
            if not value.strip().isdigit():
                raise WireError(f"bad Content-Length {value!r}")
            length = int(value)
    return chunked, None if chunked else length


def check_length(length: int | None, sent: int, *, final: bool = False) -> None:
    """A request body not chunked is exactly its Content-Length (none given: no body);
    ``sent`` is what went so far, ``final`` once the body ended."""
    declared = length or 0
    if sent > declared or (final and sent < declared):
        raise WireError(
            f"a request body of {sent} bytes or more does not match its Content-Length ({declared})"
            if not final
            else f"the request body was {sent} bytes, its Content-Length {declared}"
        )


def parse_response_head(data: bytes) -> tuple[ResponseHead, int] | None:
    """The response head at the start of ``data`` and its length on the wire; None
    while its blank line has not arrived. Raises :class:`WireError` when malformed.

    The caller bounds how much it buffers while this returns None.
    """
    parsed = _parse_head(data, _STATUS_RE, "status line")
    if parsed is None:
        return None
    status, headers, size = parsed
    version, code, reason = status.groups()
    if int(code) < 100:
        raise WireError(f"status {code.decode()} is not a status code (100-999)")
    return ResponseHead(int(code), reason or b"", version, headers), size


def parse_request_head(
    data: bytes, max_fields: int | None = None
) -> tuple[RequestHead, int] | None:
    """The request head at the start of ``data`` and its length on the wire; None
    while its blank line has not arrived. Raises :class:`WireError` when malformed,
    as soon as the first byte shows it cannot be a request line (a TLS handshake
    sent to a plain port is refused before it completes a "head").

    A request line is ``method SP target SP HTTP/x.y`` with a token for the method
    and visible ASCII for the target; then :func:`check_request_lines` (at most
    ``max_fields`` field lines, else 431; no obsolete folding) and
    :func:`check_request` (Host, framing). The caller bounds how much it buffers
    while this returns None.
    """
    if data and data[0] < 0x21:  # a blank line, a space, a control byte: not a method
        raise WireError(f"illegal request line {data[:40]!r}: it must begin with a method")
    parsed = _parse_head(data, _REQUEST_RE, "request line", max_fields)
    if parsed is None:
        return None
    request, headers, size = parsed
    method, target, version = request.groups()
    head = RequestHead(method, target, version, headers)
    check_request(head)
    return head, size


def screen_request_head(data: bytes, max_fields: int | None) -> None:
    """Apply :func:`check_request_lines` to the raw head at the start of ``data`` (its
    blank line arrived), for an engine that parses the head itself (h11 unfolds
    obsolete folds silently, and counts no fields)."""
    split = _head_lines(data)
    if split is not None:
        check_request_lines(split[0][1:], max_fields)


def check_request_lines(lines: list[bytes], max_fields: int | None) -> None:
    """A request head's field lines, stricter than h11: at most ``max_fields`` of them
    (else 431: each costs parsing and forwarding, and nginx refuses such heads too), and
    no obsolete line folding. RFC 9112 5.2 lets a server either unfold or refuse a fold;
    a hop in front that does not unfold reads ``Transfer-Encoding:`` + `` chunked`` as
    two things, so refusing is the reading no other hop can contradict."""
    if max_fields is not None and len(lines) > max_fields:
        raise WireError(
            f"request head has {len(lines)} header lines, over the limit of {max_fields} "
            "(--max-header-count)",
            431,
        )
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise WireError(
                f"obsolete line folding in the request head at {line[:40]!r}: "
                "send each header field on one line (RFC 9112 5.2)"
            )


def check_request(head: RequestHead) -> None:
    """The rule a request head must meet beyond its grammar (RFC 9112 3.2): exactly
    one Host field in HTTP/1.1 (at most one before), holding ``uri-host [":" port]``
    (RFC 3986 3.2.2): no userinfo, no spaces. A proxy that forwarded ``Host:
    user@evil.example`` would hand a spoofed authority to whatever reads
    X-Forwarded-Host. (Content-Length beside Transfer-Encoding is the proxy's to
    refuse, in ``proxy._relay.admit``, whichever engine read the head.)"""
    hosts = [value for name, value in head.headers if name.lower() == b"host"]
    if len(hosts) > 1:
        raise WireError("more than one Host header field; send exactly one")
    if not hosts and head.http_version == b"1.1":
        raise WireError("an HTTP/1.1 request needs a Host header field (RFC 9112 3.2)")
    if hosts and not _HOST_RE.fullmatch(hosts[0]):
        raise WireError(
            f"Host {hosts[0][:100]!r} is not host[:port] (RFC 9112 3.2, RFC 3986 3.2.2)"
        )


def check_trailer_line(line: bytes) -> None:
    """One field line of a chunked body's trailer section (its ending stripped): a
    valid field as in a head, not folded, and no framing field (RFC 9110 6.5.1:
    a trailer must not say how the message is framed). Raises :class:`WireError`."""
    if line[:1] in (b" ", b"\t"):
        raise WireError(f"obsolete line folding in a trailer section at {line[:40]!r}")
    check_trailer_name(_field(line)[0])


def check_trailer_name(name: bytes) -> None:
    """Refuse a framing field in a trailer section (:class:`WireError`): it would say
    after the fact how the message was framed, and a hop that merged it would disagree."""
    if name.lower() in FRAMING_FIELDS:
        raise WireError(f"a {name.decode('ascii', 'replace')} field in a trailer section")


def has_blank_line(data: bytes | bytearray, start: int = 0) -> bool:
    """True when ``data`` holds the blank line that ends a head, at or after ``start``."""
    return _BLANK_LINE.search(data, start) is not None


def _parse_head(
    data: bytes, start_line: re.Pattern[bytes], what: str, max_fields: int | None = None
) -> tuple[re.Match[bytes], Headers, int] | None:
    """The head at the start of ``data``: its start line (as ``start_line`` matched it),
    its fields and its size; None while its blank line has not arrived. ``max_fields``
    given: a request head, checked by :func:`check_request_lines` (None: a response,
    whose folds are unfolded)."""
    if data[:1] == b"\n" or data[:2] == b"\r\n":
        raise WireError(f"no {what}: the head began with a blank line")
    split = _head_lines(data)
    if split is None:
        return None
    lines, size = split
    match = start_line.fullmatch(lines[0])
    if match is None:
        raise WireError(f"illegal {what} {lines[0][:200]!r}")
    if start_line is _REQUEST_RE:
        check_request_lines(lines[1:], max_fields)
    return match, _fields(lines[1:]), size


def _head_lines(data: bytes) -> tuple[list[bytes], int] | None:
    """The lines of the head at the start of ``data`` (each ended by CRLF or a bare
    LF, the ending dropped) and the head's size; None while its blank line is missing."""
    end = _BLANK_LINE.search(data)
    if end is None:
        return None
    lines = data[: end.start()].split(b"\n")
    return [line[:-1] if line.endswith(b"\r") else line for line in lines], end.end()


def _fields(lines: list[bytes]) -> Headers:
    """Header lines as fields (obsolete folds joined with a space), framing checked."""
    headers: Headers = []
    folded: bytes | None = None
    for line in lines:
        if line[:1] in (b" ", b"\t"):  # obsolete line folding (RFC 9112 5.2)
            if folded is None:
                raise WireError("a continuation line before the first header field")
            folded += b" " + line.lstrip(b" \t")
            continue
        if folded is not None:
            headers.append(_field(folded))
        folded = line
    if folded is not None:
        headers.append(_field(folded))
    return framing_checked(headers)


def _field(line: bytes) -> tuple[bytes, bytes]:
    match = _FIELD_RE.fullmatch(line)
    if match is None:
        raise WireError(f"illegal header line {line!r}")
    return match[1].lower(), match[2]


def framing_checked(headers: Headers) -> Headers:
    """``headers`` with one Content-Length (``n, n`` and repeats of an equal value
    become one ``n``); raises :class:`WireError` for conflicting lengths or a
    transfer coding other than chunked. Names keep their case."""
    out: Headers = []
    length: bytes | None = None
    coded = False
    for name, value in headers:
        low = name.lower()
        if low == b"content-length":
            values = {part.strip() for part in value.split(b",")}
            if len(values) != 1:
                raise WireError("conflicting Content-Length values")
            one = values.pop()
            if not _LENGTH_RE.fullmatch(one) or len(one) > MAX_LENGTH_DIGITS:
                raise WireError(f"bad Content-Length {value!r}")
            if length is not None:
                if one != length:
                    raise WireError("conflicting Content-Length headers")
                continue
            length = value = one
        elif low == b"transfer-encoding":
            if coded:
                raise WireError("more than one Transfer-Encoding header")
            value = value.lower()  # coding names are case-insensitive (RFC 9112 7)
            if value != b"chunked":
                raise WireError(f"transfer coding {value!r} is not supported (only chunked)")
            coded = True
        out.append((name, value))
    return out


def body_framing(method: str, head: ResponseHead) -> tuple[str, int]:
    """How the response body ends (RFC 9112 6.3): ``("none", 0)``, ``("chunked", 0)``,
    ``("length", n)``, or ``("close", 0)`` (read until the origin closes)."""
    if method == "HEAD" or head.status_code in (204, 304) or head.status_code < 200:
        return "none", 0
    length = None
    for name, value in head.headers:
        if name == b"transfer-encoding":
            return "chunked", 0
        if name == b"content-length" and length is None:
            length = int(value)
    if length is not None:
        return ("length", length) if length else ("none", 0)
    return "close", 0


def keep_alive(http_version: bytes, headers: Headers) -> bool:
    """True unless the message is HTTP/1.0, says ``Connection: close`` (RFC 9112 9.3),
    or carries both Content-Length and Transfer-Encoding: such a message was read by
    its coding, but RFC 9112 6.3 calls it an error to be closed after, as the peer may
    have meant the length (h11 keeps such a connection; a pooled upstream must not)."""
    if http_version < b"1.1":
        return False
    framing = 0
    for name, value in headers:
        low = name.lower()
        if low == b"connection" and any(
            token.strip().lower() == b"close" for token in value.split(b",")
        ):
            return False
        if low in FRAMING_FIELDS:
            framing |= 1 if low == b"content-length" else 2
    return framing != 3
