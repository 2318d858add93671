"""The ``ssekit`` command: ``ssekit proxy`` and ``ssekit mock-upstream``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence

from ._errors import ConfigError

__all__ = ("main",)

EXAMPLES = """\
examples:
  ssekit proxy
      proxy to the built-in OpenAI-style mock (started in-process), on 127.0.0.1:8080
  ssekit proxy --upstream https://api.openai.com --api-key-env OPENAI_API_KEY
      keep the key on the server; clients send no key (or --client-token-env tokens)
  ssekit proxy --upstream http://10.0.0.5:8000/v1-prefix --listen 0.0.0.0:8080 --heartbeat 15
      bind all interfaces (an explicit choice) and keep idle load balancers from cutting streams
  ssekit mock-upstream --listen 127.0.0.1:9000 --tokens 100 --delay 0.02

try it:
  curl -N http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model":"ssekit-mock","stream":true,"messages":[{"role":"user","content":"hi"}]}'
"""


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:8080)")
    return host.strip("[]"), int(port)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number of seconds")
    return seconds


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults that mean something (not None or an off switch)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    fmt = _Help
    parser = argparse.ArgumentParser(
        prog="ssekit",
        description="Server-Sent Events toolkit: a transparent streaming reverse proxy for "
        "OpenAI-style APIs, and a mock upstream to try it against.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    proxy = sub.add_parser(
        "proxy",
        help="run the reverse proxy",
        description="Forward every request to one upstream, streaming responses unchanged "
        "(byte for byte, chunk for chunk). Without --upstream, start the built-in mock "
        "upstream in-process and proxy to it.",
        epilog=EXAMPLES,
        formatter_class=fmt,
    )
    proxy.add_argument(
        "--upstream",
        metavar="URL",
        help="upstream base URL, http(s)://host[:port][/prefix]; default: the built-in mock",
    )
    proxy.add_argument(
        "--listen",
        type=_listen,
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="address to listen on (0.0.0.0 exposes it to the network: an explicit choice)",
    )
    proxy.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="upstream TCP/TLS connect timeout (then 504)",
    )
    proxy.add_argument(
        "--first-byte-timeout",
        type=_seconds,
        default=60.0,
        metavar="S",
        help="wait this long for the upstream's response head (then 504)",
    )
    proxy.add_argument(
        "--idle-timeout",
        type=_seconds,
        default=300.0,
        metavar="S",
        help="longest silence between upstream body chunks before the stream is cut",
    )
    proxy.add_argument(
        "--header-timeout",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="clients must send their request head within this (then 408)",
    )
    proxy.add_argument(
        "--retries",
        type=int,
        default=2,
        metavar="N",
        help="retries of upstream connect failures, only before any byte was sent",
    )
    proxy.add_argument(
        "--heartbeat",
        type=_seconds,
        default=None,
        metavar="S",
        help="send an SSE comment after S idle seconds, between events (off: byte-transparent)",
    )
    proxy.add_argument(
        "--error-event",
        action="store_true",
        help="before cutting a broken SSE stream, send 'event: error' (at an event boundary)",
    )
    proxy.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="env var holding the upstream API key(s), comma-separated, rotated; "
        "replaces the client's Authorization",
    )
    proxy.add_argument(
        "--client-token-env",
        metavar="VAR",
        help="env var holding token(s) clients must send as 'Authorization: Bearer <token>'",
    )
    proxy.add_argument(
        "--upstream-ca",
        metavar="FILE",
        help="PEM CA bundle to verify an https upstream (default: system trust store)",
    )
    proxy.add_argument(
        "--upstream-proxy",
        metavar="URL",
        help="reach the upstream through this HTTP CONNECT proxy, http://host:port",
    )
    proxy.add_argument(
        "--admin-prefix",
        default="/_ssekit",
        metavar="PATH",
        help="path prefix of the proxy's own GET PATH/metrics and PATH/health",
    )
    proxy.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="on SIGTERM/SIGINT, let streams finish this long, then cut them",
    )
    proxy.add_argument(
        "--max-header-size",
        type=int,
        default=64 * 1024,
        metavar="BYTES",
        help="largest request head accepted (then 431)",
    )
    proxy.add_argument(
        "--pool-size",
        type=int,
        default=32,
        metavar="N",
        help="idle keep-alive upstream connections kept for reuse",
    )
    proxy.add_argument(
        "--max-connections",
        type=int,
        default=1024,
        metavar="N",
        help="concurrent client connections (more get 503)",
    )
    proxy.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="one line per request on stderr",
    )

    mock = sub.add_parser(
        "mock-upstream",
        help="run the built-in OpenAI-compatible mock upstream",
        description="POST /v1/chat/completions (streaming or not), GET /v1/models, "
        "GET /v1/events (numbered events honouring Last-Event-ID).",
        formatter_class=fmt,
    )
    mock.add_argument(
        "--listen",
        type=_listen,
        default="127.0.0.1:9000",
        metavar="HOST:PORT",
        help="address to listen on",
    )
    mock.add_argument(
        "--tokens", type=int, default=40, metavar="N", help="chunk events per streamed answer"
    )
    mock.add_argument(
        "--delay", type=float, default=0.05, metavar="S", help="seconds between chunk events"
    )
    return parser  # fmt: skip


def _keys(var: str | None, option: str) -> tuple[str, ...]:
    if var is None:
        return ()
    value = os.environ.get(var)
    if not value:
        raise ConfigError(f"{option} {var}: the environment variable {var} is unset or empty")
    return tuple(k.strip() for k in value.split(",") if k.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a configuration error)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    try:
        if args.command == "mock-upstream":
            return _run_mock(args)
        return _run_proxy(args)
    except ConfigError as exc:
        print(f"ssekit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _run_mock(args: argparse.Namespace) -> int:
    import anyio

    from .proxy import MockConfig, serve_mock

    host, port = args.listen
    config = MockConfig(listen_host=host, listen_port=port, tokens=args.tokens, delay=args.delay)

    async def run() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as tg:
                bound = await tg.start(serve_mock, config)
                print(f"ssekit mock upstream listening on http://{bound[0]}:{bound[1]}", flush=True)
                await _first_signal(signals)
                tg.cancel_scope.cancel()

    anyio.run(run)
    return 0


async def _first_signal(signals: AsyncIterator[int]) -> None:
    async for _ in signals:
        return


def _run_proxy(args: argparse.Namespace) -> int:
    import anyio
    import anyio.abc

    from .proxy import MockConfig, ProxyConfig, serve, serve_mock

    host, port = args.listen
    settings = dict(
        listen_host=host,
        listen_port=port,
        connect_timeout=args.connect_timeout,
        first_byte_timeout=args.first_byte_timeout,
        idle_timeout=args.idle_timeout,
        header_timeout=args.header_timeout,
        retries=args.retries,
        heartbeat=args.heartbeat,
        error_event=args.error_event,
        api_keys=_keys(args.api_key_env, "--api-key-env"),
        client_tokens=_keys(args.client_token_env, "--client-token-env"),
        upstream_ca=args.upstream_ca,
        upstream_proxy=args.upstream_proxy,
        admin_prefix=args.admin_prefix,
        drain_timeout=args.drain_timeout,
        max_header_size=args.max_header_size,
        pool_size=args.pool_size,
        max_connections=args.max_connections,
        log_format=args.log_format,
    )
    # Validate every option before starting anything (the mock included).
    ProxyConfig(upstream=args.upstream or "http://127.0.0.1", **settings)

    async def run() -> None:
        # Signals are caught from before the banner: a SIGTERM right after it drains.
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            await run_until(signals)

    async def run_until(signals: AsyncIterator[int]) -> None:
        async with anyio.create_task_group() as tg:
            upstream = args.upstream
            if upstream is None:
                mock_host, mock_port = await tg.start(serve_mock, MockConfig(listen_port=0))
                upstream = f"http://{mock_host}:{mock_port}"
                print(f"ssekit: no --upstream given; built-in mock upstream on {upstream}")
            config = ProxyConfig(upstream=upstream, **settings)
            shutdown = anyio.Event()
            finished = anyio.Event()

            async def run_proxy(*, task_status: anyio.abc.TaskStatus[tuple[str, int]]) -> None:
                try:
                    await serve(config, task_status=task_status, shutdown=shutdown)
                finally:
                    finished.set()

            bound = await tg.start(run_proxy)
            base = f"http://{bound[0]}:{bound[1]}"
            print(
                f"ssekit proxy listening on {base} -> {upstream}\n"
                f"metrics: {base}{config.admin_prefix}/metrics\n"
                f"try:\n  curl -N {base}/v1/chat/completions -H 'Content-Type: application/json' "
                '-d \'{"model":"ssekit-mock","stream":true,'
                '"messages":[{"role":"user","content":"hi"}]}\'',
                flush=True,
            )
            await _first_signal(signals)
            print(
                f"ssekit: shutting down, draining streams up to {config.drain_timeout:g}s",
                file=sys.stderr,
                flush=True,
            )
            shutdown.set()
            await finished.wait()
            tg.cancel_scope.cancel()

    anyio.run(run)
    return 0
