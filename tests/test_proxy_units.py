"""The proxy's pure parts: configuration, header rules, admission, the relay's phase table."""

from __future__ import annotations

import itertools
import json

import pytest

import ssekit
from ssekit._http import OriginConnection, OriginPool, error_body, server_connection
from ssekit.proxy import Origin, ProxyConfig
from ssekit.proxy._headers import request_headers, response_headers
from ssekit.proxy._relay import (
    Admin,
    Forward,
    Input,
    Phase,
    Refuse,
    Relay,
    admit,
    heartbeat_due,
    retry_delay,
    retry_on_fresh_connection,
)

CONFIG = ProxyConfig(upstream="https://api.example.test/base")


def test_origin_from_url_fills_default_ports_and_prefix() -> None:
    assert Origin.from_url("https://h/v1/") == Origin(
        scheme="https", host="h", port=443, base_path="/v1"
    )
    assert Origin.from_url("http://h:8000").authority == "h:8000"
    assert Origin.from_url("http://[::1]:80").authority == "[::1]"


@pytest.mark.parametrize(
    "settings",
    [
        {"upstream": "ftp://h"},
        {"upstream": "http://"},
        {"upstream": "http://h?q=1"},
        {"upstream": "http://user:pw@h"},
        {"upstream": "http://h", "idle_timeout": 0},
        {"upstream": "http://h", "send_timeout": 0},
        {"upstream": "http://h", "heartbeat": -1},
        {"upstream": "http://h", "retries": -1},
        {"upstream": "http://h", "listen_port": 70000},
        {"upstream": "http://h", "admin_prefix": "nope"},
        {"upstream": "http://h", "upstream_proxy": "https://p:3128"},
        {"upstream": "http://h", "api_keys": ("a\nb",)},
        {"upstream": "http://h", "http": "httptools"},
    ],
)
def test_bad_config_raises_config_error(settings: dict[str, object]) -> None:
    with pytest.raises(ssekit.ConfigError):
        ProxyConfig(**settings)  # type: ignore[arg-type]


def test_an_unknown_http_engine_is_refused_wherever_it_is_named() -> None:
    for make in (
        lambda: server_connection("h2", 1024),
        lambda: OriginPool(Origin.from_url("http://h"), size=1, connect_timeout=1, engine="h2"),
        lambda: OriginConnection(None, Origin.from_url("http://h"), engine="h2"),  # type: ignore[arg-type]
    ):
        with pytest.raises(ssekit.ConfigError, match="'h2' is not one of ssekit, h11"):
            make()


def test_request_headers_drop_hop_by_hop_and_set_forwarding_fields() -> None:
    out = request_headers(
        [
            (b"Host", b"proxy.local"),
            (b"Connection", b"keep-alive, X-Secret"),
            (b"X-Secret", b"1"),
            (b"TE", b"trailers"),
            (b"Authorization", b"Bearer client"),
            (b"X-Forwarded-For", b"10.0.0.1"),
            (b"Accept", b"text/event-stream"),
        ],
        origin=CONFIG.origin,
        client_addr="127.0.0.1",
        api_key="sk-server",
    )
    assert out[0] == (b"host", b"api.example.test")
    names = [k.lower() for k, _ in out]
    assert b"connection" not in names
    assert b"x-secret" not in names
    assert b"te" not in names
    assert (b"Accept", b"text/event-stream") in out
    assert (b"x-forwarded-for", b"10.0.0.1, 127.0.0.1") in out
    assert (b"x-forwarded-host", b"proxy.local") in out
    assert (b"authorization", b"Bearer sk-server") in out
    assert (b"Authorization", b"Bearer client") not in out


def test_response_headers_keep_end_to_end_fields_and_mark_streams_unbuffered() -> None:
    out = response_headers(
        [
            (b"Content-Type", b"text/event-stream; charset=utf-8"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Content-Encoding", b"gzip"),
            (b"Keep-Alive", b"timeout=5"),
        ]
    )
    assert (b"Content-Encoding", b"gzip") in out  # compression passes unchanged
    assert (b"x-accel-buffering", b"no") in out
    assert all(k.lower() not in (b"transfer-encoding", b"keep-alive") for k, _ in out)


@pytest.mark.parametrize(
    ("method", "target", "headers", "expected"),
    [
        ("GET", "/v1/models", [], Forward("/base/v1/models")),
        ("GET", "/_ssekit/metrics", [], Admin("metrics")),
        ("POST", "/_ssekit/metrics", [], Refuse),
        ("CONNECT", "h:443", [], Refuse),
        ("GET", "http://evil.test/", [(b"host", b"evil.test")], Refuse),
        ("POST", "/", [(b"content-length", b"1"), (b"transfer-encoding", b"chunked")], Refuse),
        ("GET", "/", [(b"x", b"a" * 70_000)], Refuse),
    ],
)
def test_admit(
    method: str, target: str, headers: list[tuple[bytes, bytes]], expected: object
) -> None:
    decision = admit(method, target, headers, CONFIG)
    if expected is Refuse:
        assert isinstance(decision, Refuse)
    else:
        assert decision == expected


def test_client_tokens_are_required_when_configured() -> None:
    config = ProxyConfig(upstream="http://h", client_tokens=("t",))
    assert isinstance(admit("GET", "/", [], config), Refuse)
    assert admit("GET", "/", [(b"authorization", b"Bearer t")], config) == Forward("/")


def test_connect_failures_are_retried_with_doubling_backoff_up_to_retries() -> None:
    error = ssekit.UpstreamError("refused", 502)
    config = ProxyConfig(upstream="http://h", retries=3, retry_backoff=0.1)
    delays = [retry_delay(error, attempt=a, config=config) for a in range(4)]
    assert delays == [0.1, 0.2, 0.4, None]


@pytest.mark.parametrize(
    ("reused", "bytes_received", "replayable", "expected"),
    [
        (True, 0, True, True),  # a kept-alive connection the upstream had dropped
        (False, 0, True, False),  # a fresh connection failing is the upstream's answer
        (True, 12, True, False),  # it started answering: the request reached it
        (True, 0, False, False),  # the body is no longer held: cannot send it again
    ],
)
def test_resend_on_a_fresh_connection_only_when_a_reused_one_never_answered(
    reused: bool, bytes_received: int, replayable: bool, expected: bool
) -> None:
    assert (
        retry_on_fresh_connection(
            reused=reused, bytes_received=bytes_received, replayable=replayable
        )
        is expected
    )


def test_heartbeat_due_only_when_idle_and_between_events() -> None:
    assert heartbeat_due(now=10, last_write=5, interval=5, at_boundary=True)
    assert not heartbeat_due(now=10, last_write=6, interval=5, at_boundary=True)
    assert not heartbeat_due(now=10, last_write=0, interval=5, at_boundary=False)
    assert not heartbeat_due(now=10, last_write=0, interval=None, at_boundary=True)


def test_every_phase_and_input_lands_in_a_phase_or_raises_state_error() -> None:
    terminal = {Phase.DONE, Phase.ANSWERED, Phase.CUT}
    impossible = {
        (Phase.WAITING, Input.CHUNK),
        (Phase.WAITING, Input.END),
        (Phase.STREAMING, Input.HEAD),
        # Refusals and the proxy's own answers happen before any response head.
        (Phase.STREAMING, Input.LOCAL),
        (Phase.STREAMING, Input.UNAUTHORIZED),
        (Phase.STREAMING, Input.OVERLOADED),
    }
    for phase, event in itertools.product(Phase, Input):
        relay = Relay()
        relay.phase = phase
        if phase in terminal or (phase, event) in impossible:
            with pytest.raises(ssekit.StateError):
                relay.on(event)
            assert relay.phase is phase  # refused: the relay did not move
        else:
            assert relay.on(event) in Phase


def test_failures_before_the_head_answer_after_it_cut() -> None:
    before = Relay()
    assert before.on(Input.TIMED_OUT) is Phase.ANSWERED
    after = Relay()
    after.on(Input.HEAD)
    assert after.on(Input.UPSTREAM_FAILED) is Phase.CUT
    assert after.outcome is ssekit.proxy.Outcome.UPSTREAM_CUT


def test_error_body_is_in_openai_shape() -> None:
    body = json.loads(error_body(502, "upstream refused"))
    assert body == {
        "error": {"message": "upstream refused", "type": "proxy_error", "param": None, "code": 502}
    }


@pytest.mark.parametrize(
    ("version", "status"),
    [(b"2.0", 505), (b"9.9", 505), (b"0.9", 505), (b"1.2", None), (b"1.0", None)],
)
def test_another_major_http_version_gets_505_a_higher_minor_is_served(
    version: bytes, status: int | None
) -> None:
    decision = admit("GET", "/v1/models", [], CONFIG, version)
    if status is None:
        assert decision == Forward("/base/v1/models")
    else:
        assert isinstance(decision, Refuse)
        assert decision.status == status


def test_http_1_0_with_transfer_encoding_is_bad_framing() -> None:
    decision = admit("POST", "/", [(b"transfer-encoding", b"chunked")], CONFIG, b"1.0")
    assert isinstance(decision, Refuse)
    assert decision.status == 400


@pytest.mark.parametrize(
    "target",
    [
        "/../secret",
        "/v1/..",
        "/v1/%2e%2e/x",
        "/v1/%2E%2E/x",
        "/v1/%2e%2e%2fx",
        "/v1/..%2fsecret",
        "/v1/..%5csecret",
        "/v1/./x",
        "/v1/%2e/x",
    ],
)
def test_dot_segments_are_refused_so_nothing_climbs_above_the_prefix(target: str) -> None:
    decision = admit("GET", target, [], CONFIG)
    assert isinstance(decision, Refuse)
    assert decision.status == 400


@pytest.mark.parametrize("target", ["/v1/a..b", "/v1/...", "/v1/x?q=../..", "/v1/.well-known"])
def test_dots_that_are_not_whole_segments_pass(target: str) -> None:
    assert admit("GET", target, [], CONFIG) == Forward("/base" + target)


def test_metrics_need_a_token_when_tokens_are_on_health_never_does() -> None:
    bearer = [(b"authorization", b"Bearer adm")]
    client_only = ProxyConfig(upstream="http://h", client_tokens=("t",))
    admin = ProxyConfig(upstream="http://h", client_tokens=("t",), admin_tokens=("adm",))
    assert admit("GET", "/_ssekit/health", [], admin) == Admin("health")
    assert admit("GET", "/_ssekit/metrics", [], CONFIG) == Admin("metrics")  # no tokens at all
    refused = admit("GET", "/_ssekit/metrics", [], client_only)
    assert isinstance(refused, Refuse)
    assert refused.status == 401
    assert refused.input is Input.UNAUTHORIZED
    ok = admit("GET", "/_ssekit/metrics", [(b"authorization", b"Bearer t")], client_only)
    assert ok == Admin("metrics")
    assert admit("GET", "/_ssekit/metrics", bearer, admin) == Admin("metrics")
    # With an admin token, the client token no longer opens the metrics.
    wrong = admit("GET", "/_ssekit/metrics", [(b"authorization", b"Bearer t")], admin)
    assert isinstance(wrong, Refuse)


@pytest.mark.parametrize("tokens", [("",), (" t",), ("a,b",), ("t\n",)])
def test_tokens_that_would_silently_turn_checks_off_are_refused(tokens: tuple[str, ...]) -> None:
    with pytest.raises(ssekit.ConfigError):
        ProxyConfig(upstream="http://h", client_tokens=tokens)


def test_response_with_content_length_and_transfer_encoding_loses_the_length() -> None:
    headers = response_headers(
        [(b"content-length", b"5"), (b"transfer-encoding", b"chunked"), (b"x", b"1")]
    )
    assert [k for k, _ in headers] == [b"x", b"via"]


def test_expect_is_answered_by_the_proxy_not_forwarded() -> None:
    headers = request_headers(
        [(b"host", b"p"), (b"expect", b"100-continue")],
        origin=Origin.from_url("http://u"),
        client_addr="1.2.3.4",
    )
    assert b"expect" not in [k for k, _ in headers]
