"""The proxy's pure parts: configuration, header rules, admission, the relay's phase table."""

from __future__ import annotations

import itertools
import json

import pytest

import ssekit
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
    error_body,
    heartbeat_due,
    retry_delay,
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
        {"upstream": "http://h", "heartbeat": -1},
        {"upstream": "http://h", "retries": -1},
        {"upstream": "http://h", "listen_port": 70000},
        {"upstream": "http://h", "admin_prefix": "nope"},
        {"upstream": "http://h", "upstream_proxy": "https://p:3128"},
        {"upstream": "http://h", "api_keys": ("a\nb",)},
    ],
)
def test_bad_config_raises_config_error(settings: dict[str, object]) -> None:
    with pytest.raises(ssekit.ConfigError):
        ProxyConfig(**settings)  # type: ignore[arg-type]


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


def test_connect_retries_back_off_doubling_up_to_the_configured_count() -> None:
    # That nothing is retried once the request went upstream is checked end to
    # end (test_proxy_e2e.py): the proxy only ever asks this before sending.
    error = ssekit.UpstreamError("refused", 502)
    config = ProxyConfig(upstream="http://h", retries=3, retry_backoff=0.1)
    delays = [retry_delay(error, bytes_sent=0, attempt=a, config=config) for a in range(4)]
    assert delays == [0.1, 0.2, 0.4, None]


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
    }
    for phase, event in itertools.product(Phase, Input):
        relay = Relay()
        relay.phase = phase
        if phase in terminal or (phase, event) in impossible:
            with pytest.raises(ssekit.StateError, match=phase.value):
                relay.on(event)
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
