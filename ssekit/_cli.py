"""The ``ssekit`` command: ``ssekit proxy`` and ``ssekit mock-upstream``."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import Field, fields
from functools import partial
from typing import Any

from . import __version__
from ._errors import ConfigError
from ._http import ENGINES
from .proxy._config import Group, ProxyConfig

__all__ = ("main",)

#: Where a ProxyConfig field without ``metadata["group"]`` is listed in ``--help``.
DEFAULT_GROUP = Group.FORWARDING
#: What each ``ssekit proxy --help`` section holds.
GROUP_HELP = {
    Group.FORWARDING: "where requests go and how they are passed on",
    Group.TIMEOUTS: "seconds; each says what happens when it passes",
    Group.LIMITS: "sizes and counts; each says what a client gets past it",
    Group.KEYS: "secrets come from environment variables, never the command line",
    Group.RESUME: "resumable streams: off unless --resume-store is set",
    Group.USAGE: "token usage per key and model, read from the streams (see README)",
    Group.OPERATIONS: "processes, logs, metrics",
}

EXAMPLES = """\
examples:
  ssekit proxy
      proxy to the built-in OpenAI-style mock (started in-process), on 127.0.0.1:8080
  ssekit proxy --upstream https://api.openai.com --api-key-env OPENAI_API_KEY
      keep the key on the server; clients send no key (or --client-token-env tokens)
  ssekit proxy --upstream http://10.0.0.5:8000/v1-prefix --listen 0.0.0.0:8080 --heartbeat 15
      bind all interfaces (an explicit choice) and keep idle load balancers from cutting streams
  ssekit proxy --http h11
      both sides of the proxy (and the built-in mock) on h11, the reference HTTP/1.1
  ssekit proxy --upstream https://api.openai.com --api-key-env OPENAI_API_KEY \\
      --workers auto --resume-store redis://127.0.0.1:6379/0
      one process per core; an answer survives a dropped connection, resumed on any
      instance sharing that Redis at GET /_ssekit/streams/<id>
  ssekit mock-upstream --listen 127.0.0.1:9000 --tokens 100 --delay 0.02
  ssekit proxy --upstream https://api.openai.com --api-key-env OPENAI_API_KEY --record cassettes/
      write each exchange as a cassette (chunks and their timing; secrets redacted), then
  ssekit mock-upstream --replay cassettes/ --rechunk 1
      serve them again, at their pace, re-cut into 1-byte reads; ssekit cassette show FILE

try it:
  curl -N http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model":"ssekit-mock","stream":true,"messages":[{"role":"user","content":"hi"}]}'
"""


MOCK_ROUTES = """\
An OpenAI-compatible upstream for demos, tests and offline work. Routes:

  POST /v1/chat/completions  {"stream": true}: chat.completion.chunk events (English and
                             Chinese, --tokens of them, --delay apart), then data: [DONE];
                             otherwise one JSON chat.completion ("max_tokens" caps both);
                             usage in the last chunk with stream_options.include_usage
  POST /v1/responses         the Responses API, streamed (response.completed has usage) or not
  POST /v1/messages          Anthropic Messages, streamed (message_start, message_delta) or not
                             (usage is exact: prompt 10 + words of the request, cached half
                             of it; ?cut_after=K on a POST cuts a stream after K tokens)
  GET  /v1/models            the one mock model
  GET  /v1/events            numbered events with id: fields, resuming after Last-Event-ID:
                             ?count=N events (default 10), ?cut_after=K cuts the connection
                             after K of them, ?retry=MS sets the reconnection time (500)
  GET  /demo                 a page with an EventSource on /v1/events and a fetch() reader
                             of a streamed chat; open it through the proxy in a browser
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


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the examples' line breaks; show defaults that mean something (not None or off)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


#: ProxyConfig fields that take one of a few names, and those names.
_CHOICES: dict[str, tuple[str, ...]] = {
    "log_format": ("text", "json"),
    "http": ENGINES,
    "on_client_disconnect": ("cancel", "finish"),
}


def group_of(option: Field[Any]) -> Group:
    """The ``--help`` section of a ProxyConfig field (``DEFAULT_GROUP`` when it names none)."""
    group = option.metadata.get("group", DEFAULT_GROUP)
    assert isinstance(group, Group)
    return group


def _add_config_option(parser: argparse._ActionsContainer, option: Field[Any]) -> None:
    """``--dashed-name`` for a ProxyConfig field: its default and help said there, once."""
    name = "--" + option.name.replace("_", "-")
    default, help = option.default, option.metadata["help"]
    if isinstance(default, bool):
        parser.add_argument(name, action="store_true", help=help)
    elif option.name in _CHOICES:
        parser.add_argument(name, choices=_CHOICES[option.name], default=default, help=help)
    else:
        kind: Callable[[str], object] = str
        if option.name in ("drain_timeout", "resume_grace"):  # 0 is meaningful
            kind = _non_negative_seconds
        elif option.type in ("float", "float | None"):
            kind = _seconds
        elif option.type == "int":
            kind = _non_negative_int
        metavar = option.metadata["metavar"]
        parser.add_argument(name, type=kind, default=default, metavar=metavar, help=help)


def _non_negative_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds >= 0")
    return seconds


def _non_negative_int(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= 0")
    return int(value)


def _parser() -> argparse.ArgumentParser:
    fmt = _Help
    parser = argparse.ArgumentParser(
        prog="ssekit",
        description="Server-Sent Events toolkit: a transparent streaming reverse proxy for "
        "OpenAI-style APIs, and a mock upstream to try it against.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ssekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    proxy = sub.add_parser(
        "proxy",
        help="run the reverse proxy",
        description="Forward every request to one upstream, streaming responses unchanged\n"
        "(byte for byte, chunk for chunk). Without --upstream, start the built-in mock\n"
        "upstream in-process and proxy to it.",
        epilog=EXAMPLES,
        formatter_class=fmt,
    )
    groups = {group: proxy.add_argument_group(group.value, GROUP_HELP[group]) for group in Group}
    groups[Group.FORWARDING].add_argument(
        "--upstream",
        metavar="URL",
        help="upstream base URL, http(s)://host[:port][/prefix]; default: the built-in mock",
    )
    groups[Group.FORWARDING].add_argument(
        "--listen",
        type=_listen,
        default=f"{_default('listen_host')}:{_default('listen_port')}",
        metavar="HOST:PORT",
        help="address to listen on (0.0.0.0 exposes it to the network: an explicit choice)",
    )
    for option in fields(ProxyConfig):
        if "help" in option.metadata:
            _add_config_option(groups[group_of(option)], option)
    groups[Group.OPERATIONS].add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N|auto",
        help="worker processes sharing the port (SO_REUSEPORT; auto: one per core); "
        "SIGTERM drains them all, SIGHUP is ignored (no reload), a worker that dies is "
        "replaced, workers whose supervisor is gone drain and exit, metrics are summed",
    )
    groups[Group.OPERATIONS].add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop: uvloop when installed (pip install 'ssekit[speed]'), else asyncio",
    )
    groups[Group.KEYS].add_argument(
        "--api-key-env",
        metavar="[NAME=]VAR",
        action="append",
        help="env var holding the upstream API key(s), comma-separated, rotated; "
        "replaces the client's Authorization; repeatable; NAME labels its keys in the "
        "usage log and metrics (else key1, key2...)",
    )
    groups[Group.KEYS].add_argument(
        "--client-token-env",
        metavar="[NAME=]VAR",
        action="append",
        help="env var holding token(s) clients must send as 'Authorization: Bearer <token>'; "
        "repeatable; NAME labels them in the usage log (else token1, token2...)",
    )
    groups[Group.KEYS].add_argument(
        "--admin-token-env",
        metavar="VAR",
        help="env var holding token(s) for GET PATH/metrics (default: the client tokens; "
        "metrics are open only when no token of either kind is set; health is always open)",
    )
    groups[Group.OPERATIONS].add_argument(
        "--record-redact",
        action="append",
        default=[],
        metavar="NAME",
        help="with --record: also redact this header's value (repeatable); Authorization, "
        "Proxy-Authorization, Cookie, Set-Cookie, x-api-key, api-key and the proxy's own "
        "keys and tokens always are",
    )

    mock = sub.add_parser(
        "mock-upstream",
        help="run the built-in OpenAI-compatible mock upstream",
        description=MOCK_ROUTES,
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
    mock.add_argument(
        "--http",
        choices=ENGINES,
        default=_default("http"),
        help="HTTP/1.1 engine: ssekit's own (fast), or h11, the reference it is held to",
    )
    _replay_options(mock)
    _cassette_parser(sub, fmt)
    return parser  # fmt: skip


def _replay_options(mock: argparse.ArgumentParser) -> None:
    replay = mock.add_argument_group(
        "replay", "serve recorded cassettes (ssekit proxy --record) instead of the mock's routes"
    )
    replay.add_argument(
        "--replay",
        metavar="DIR|FILE",
        help="answer each request with the cassette matching it, at its recorded pace; "
        "no match: 404 naming the closest cassettes",
    )
    replay.add_argument(
        "--match",
        type=_match,
        default="method,path,body",
        metavar="KEYS",
        help="what must be equal for a cassette to answer, comma-separated among "
        "method, path, query, body (JSON bodies compare as data)",
    )
    replay.add_argument(
        "--speed",
        type=_speed,
        default="1",
        metavar="N|max",
        help="play N times as fast as recorded (0.5: half speed); max: no waiting",
    )
    replay.add_argument(
        "--rechunk",
        choices=("1", "random"),
        help="re-cut the same bytes into 1-byte or random pieces (each at its chunk's time)",
    )
    replay.add_argument(
        "--cut-after",
        type=_non_negative_int,
        metavar="N",
        help="end the connection after N events, without the last chunk (a cut stream)",
    )
    replay.add_argument("--seed", type=int, default=0, metavar="N", help="seed of --rechunk random")


def _match(value: str) -> tuple[str, ...]:
    from .cassette import MATCH_KEYS

    keys = tuple(k.strip() for k in value.split(",") if k.strip())
    unknown = [k for k in keys if k not in MATCH_KEYS]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(
            f"{value!r}: match keys are comma-separated among {', '.join(MATCH_KEYS)}"
        )
    return keys


def _speed(value: str) -> float | None:
    if value == "max":
        return None
    try:
        speed = float(value)
    except ValueError:
        speed = -1.0
    if not 0 < speed < float("inf"):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a positive speed (2: twice as fast) or max"
        )
    return speed


def _cassette_parser(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    cassette = sub.add_parser(
        "cassette",
        help="look at a recorded cassette",
        description="Cassettes are written by ssekit proxy --record DIR (one JSON-lines file "
        "per exchange) and served by ssekit mock-upstream --replay.",
        formatter_class=fmt,
    )
    actions = cassette.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser(
        "show",
        help="the stream's timeline: time to first byte, each event with its offset and gap, "
        "the chunk boundaries that cut an event or a UTF-8 character, the end",
        formatter_class=fmt,
    )
    show.add_argument("file", metavar="FILE")
    show.add_argument("--json", action="store_true", help="the timeline as one JSON object")


def _workers(value: str) -> int:
    if value == "auto":
        return max(1, os.cpu_count() or 1)
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of workers >= 1, or auto")
    return int(value)


def _event_loop(choice: str) -> tuple[str, dict[str, Any]]:
    """The loop's name for the banner and anyio's backend options for ``--loop choice``."""
    if choice == "asyncio":
        return "asyncio", {}
    try:
        import uvloop  # noqa: F401 -- only to learn whether it is installed
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(
                "--loop uvloop: uvloop is not installed; pip install 'ssekit[speed]'"
            ) from None
        return "asyncio", {}
    return "uvloop", {"use_uvloop": True}


def _default(name: str) -> Any:
    return next(f.default for f in fields(ProxyConfig) if f.name == name)


def _labelled_keys(
    specs: list[str] | None, option: str, prefix: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The values of each ``[NAME=]VAR`` of a repeated ``option``, and their labels
    (a variable's NAME, ``NAME-2`` for its second value on; unnamed: ``<prefix><position>``)."""
    from .proxy._usage import key_labels

    names: list[str | None] = []
    values: list[tuple[str, ...]] = []
    for spec in specs or ():
        name, sep, var = spec.rpartition("=")
        if sep and not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ConfigError(
                f"{option} {spec}: the label {name!r} must be letters, digits, '-', '_' or '.'"
            )
        names.append(name if sep else None)
        values.append(_keys(var, option))
    labels = key_labels(names, [len(v) for v in values], prefix)
    if len(set(labels)) < len(labels):  # two keys under one label could not be told apart
        twice = sorted({label for label in labels if labels.count(label) > 1})
        raise ConfigError(
            f"{option}: the label {twice[0]!r} names more than one key; give each variable "
            "its own NAME"
        )
    return tuple(k for v in values for k in v), labels


def _keys(var: str | None, option: str) -> tuple[str, ...]:
    """The comma-separated values of environment variable ``var`` (for ``option``).

    Set but holding no value (empty, commas, spaces) is an error, never "off":
    an operator who named a variable meant to turn the check on.
    """
    if var is None:
        return ()
    keys = tuple(k.strip() for k in os.environ.get(var, "").split(",") if k.strip())
    if not keys:
        raise ConfigError(
            f"{option} {var}: the environment variable {var} is unset or holds no value "
            "(comma-separated, non-empty)"
        )
    return keys


def _config_error(exc: BaseException) -> ConfigError | None:
    """The ConfigError in ``exc``, also when task groups wrapped it in exception groups."""
    if isinstance(exc, ConfigError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _config_error(inner)
            if found is not None:
                return found
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a configuration error)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    try:
        if args.command == "cassette":
            return _run_cassette(args)
        if args.command == "mock-upstream" and args.replay is not None:
            return _run_replay(args)
        if args.command == "mock-upstream":
            return _run_mock(args)
        return _run_proxy(args)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        error = _config_error(exc)
        if error is None:
            raise
        print(f"ssekit: error: {error}", file=sys.stderr)
        return 2


def _run_mock(args: argparse.Namespace) -> int:
    from .proxy import MockConfig, serve_mock

    host, port = args.listen
    config = MockConfig(
        listen_host=host, listen_port=port, tokens=args.tokens, delay=args.delay, http=args.http
    )

    return _serve_until_stopped(partial(serve_mock, config), f" (http: {config.http})")


def _run_cassette(args: argparse.Namespace) -> int:
    from .cassette import CassetteError, load, render_timeline, timeline

    try:
        view = timeline(load(args.file))
    except (CassetteError, OSError) as exc:
        print(f"ssekit: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(view, ensure_ascii=False, indent=1))
    else:
        print(render_timeline(view))
    return 0


def _run_replay(args: argparse.Namespace) -> int:
    from .cassette import CassetteError, Library, Pace
    from .proxy._replay import ReplayConfig, serve_replay

    host, port = args.listen
    if not os.path.exists(args.replay):
        raise ConfigError(f"--replay {args.replay}: no such file or directory")
    pace = Pace(speed=args.speed, rechunk=args.rechunk, cut_after=args.cut_after, seed=args.seed)
    config = ReplayConfig(
        source=args.replay, listen_host=host, listen_port=port, match=args.match, pace=pace,
        http=args.http,
    )  # fmt: skip
    try:
        Library(config.source, config.match).cassettes  # noqa: B018 -- a bad cassette fails now
    except CassetteError as exc:
        raise ConfigError(str(exc)) from exc

    return _serve_until_stopped(
        partial(serve_replay, config), f", replaying {args.replay} (http: {config.http})"
    )


def _serve_until_stopped(serve: Callable[..., Coroutine[Any, Any, None]], what: str) -> int:
    """Run a mock upstream's ``serve`` (it reports its bound address) until SIGTERM or
    SIGINT, after one line saying where it listens and ``what`` it serves."""
    import anyio

    async def run() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as tg:
                host, port = await tg.start(serve)
                print(f"ssekit mock upstream listening on http://{host}:{port}{what}", flush=True)
                await _first_signal(signals)
                tg.cancel_scope.cancel()

    anyio.run(run)
    return 0


async def _first_signal(signals: AsyncIterator[int]) -> None:
    async for _ in signals:
        return


def _run_proxy(args: argparse.Namespace) -> int:
    host, port = args.listen
    settings: dict[str, Any] = {
        option.name: getattr(args, option.name)
        for option in fields(ProxyConfig)
        if "help" in option.metadata
    }
    settings.update(
        listen_host=host,
        listen_port=port,
        admin_tokens=_keys(args.admin_token_env, "--admin-token-env"),
        record_redact=tuple(args.record_redact),
    )
    settings["api_keys"], settings["api_key_labels"] = _labelled_keys(
        args.api_key_env, "--api-key-env", "key"
    )
    settings["client_tokens"], settings["client_token_labels"] = _labelled_keys(
        args.client_token_env, "--client-token-env", "token"
    )
    # Validate every option before starting anything (the mock included).
    ProxyConfig(upstream=args.upstream or "http://127.0.0.1", **settings)
    loop = _event_loop(args.loop)
    if args.workers > 1 and settings["resume_store"] == "memory":
        raise ConfigError(
            "--resume-store memory keeps streams in one process, but --workers spreads "
            "requests over several: use --resume-store redis://HOST:PORT/DB with --workers"
        )
    if args.workers > 1:
        return _run_workers(args, settings, loop)
    return _run_single(args, settings, loop)


def _notifier(log_format: str) -> Callable[..., None]:
    """How the proxy says what it does itself (not per request), on logger ``ssekit.proxy``:
    ``notice(name, sentence, **fields)`` logs the sentence, or with ``--log-format json``
    one object: ``time``, ``notice`` (the name), the fields and the sentence as
    ``message``; the record carries those fields as ``ssekit``, as the resume store's do."""
    from .proxy._stats import utc_time

    log = logging.getLogger("ssekit.proxy")

    def notice(name: str, message: str, **fields: object) -> None:
        record = {"time": utc_time(time.time()), "notice": name, **fields}
        if log_format == "json":
            line = json.dumps({**record, "message": message}, ensure_ascii=False)
        else:
            line = f"ssekit: {message}"
        log.info(line, extra={"ssekit": record})

    return notice


def _banner(base: str, upstream: str, admin_prefix: str, how: str, resume: str = "") -> None:
    """What runs where; ``how``: comma-separated facts, ``key: value`` (event loop, http);
    ``resume``: the store and whether it answers (a line of its own)."""
    resume_line = f"{resume}\n" if resume else ""
    print(
        f"ssekit proxy listening on {base} -> {upstream} ({how})\n"
        f"metrics: {base}{admin_prefix}/metrics\n"
        f"{resume_line}"
        f"try:\n  curl -N {base}/v1/chat/completions -H 'Content-Type: application/json' "
        '-d \'{"model":"ssekit-mock","stream":true,'
        '"messages":[{"role":"user","content":"hi"}]}\'',
        flush=True,
    )


async def _serve_until_signal(
    config: ProxyConfig,
    *,
    started: Callable[[tuple[str, int], str], None] = lambda *_: None,
    reuse_port: bool = False,
    metrics_dir: str | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain (up to ``config.drain_timeout``).

    ``started`` gets the bound address and the resume store's state ("" when off).
    """
    import anyio
    import anyio.abc

    from .proxy._listener import Proxy

    proxy = Proxy(config, reuse_port=reuse_port, metrics_dir=metrics_dir)

    # Signals are caught from before the banner: a SIGTERM right after it drains.
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            shutdown = anyio.Event()
            finished = anyio.Event()

            async def run_proxy(*, task_status: anyio.abc.TaskStatus[tuple[str, int]]) -> None:
                try:
                    await proxy.serve(task_status=task_status, shutdown=shutdown)
                finally:
                    finished.set()

            usage_log = proxy.shared.usage_log
            if usage_log is not None:  # SIGHUP reopens it (log rotation)
                await tg.start(_reopen_on_hangup, usage_log)
            bound = await tg.start(run_proxy)  # the resume store was checked by then
            started(bound, "" if proxy.shared.resume is None else proxy.shared.resume.describe())
            await _first_signal(signals)
            if not reuse_port:  # workers: the supervisor says it once
                _notifier(config.log_format)(
                    "draining",
                    f"shutting down, draining streams up to {config.drain_timeout:g}s",
                    drain_timeout_s=config.drain_timeout,
                )
            shutdown.set()
            await finished.wait()
            tg.cancel_scope.cancel()


async def _reopen_on_hangup(usage_log: Any, *, task_status: Any) -> None:
    """Reopen ``--usage-log`` on each SIGHUP (a worker's come from its supervisor)."""
    import signal as signals

    import anyio

    with anyio.open_signal_receiver(signals.SIGHUP) as hangups:
        task_status.started()
        async for _ in hangups:
            usage_log.reopen()


def _run_single(args: argparse.Namespace, settings: dict[str, Any], loop: tuple[str, Any]) -> int:
    import anyio

    from .proxy import MockConfig, serve_mock

    name, backend_options = loop

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            upstream = args.upstream
            if upstream is None:
                mock = MockConfig(listen_port=0, http=settings["http"])
                mock_host, mock_port = await tg.start(serve_mock, mock)
                upstream = f"http://{mock_host}:{mock_port}"
                print(f"ssekit: no --upstream given; built-in mock upstream on {upstream}")
            config = ProxyConfig(upstream=upstream, **settings)

            def started(bound: tuple[str, int], resume: str) -> None:
                base = f"http://{bound[0]}:{bound[1]}"
                how = f"event loop: {name}, http: {config.http}"
                _banner(base, upstream, config.admin_prefix, how, resume)

            await _serve_until_signal(config, started=started)
            tg.cancel_scope.cancel()

    anyio.run(run, backend_options=backend_options)
    return 0


def _run_workers(args: argparse.Namespace, settings: dict[str, Any], loop: tuple[str, Any]) -> int:
    """``--workers N``: the supervisor holds the port, forks the workers, and keeps them."""
    import shutil
    import socket
    import tempfile
    from pathlib import Path

    import anyio

    from .proxy import MockConfig, serve_mock
    from .proxy._workers import Supervisor, remove_if_unowned, reserve_port

    name, backend_options = loop
    host = settings["listen_host"]
    reservation = reserve_port(host, settings["listen_port"])
    port = reservation.getsockname()[1]
    metrics_dir = Path(tempfile.mkdtemp(prefix="ssekit-metrics-"))
    mock_pid = None
    try:
        # SIGTERM, SIGINT and SIGHUP are the supervisor's from here on.
        supervisor = Supervisor(
            args.workers,
            settings["drain_timeout"],
            metrics_dir=metrics_dir,
            notice=_notifier(settings["log_format"]),
            hangup_workers=settings["usage_log"] is not None,
        )
        upstream = args.upstream
        if upstream is None:
            read_end, write_end = os.pipe()

            def run_mock() -> int:
                async def main() -> None:
                    async with anyio.create_task_group() as tg:
                        mock = MockConfig(listen_port=0, http=settings["http"])
                        _, bound = await tg.start(serve_mock, mock)
                        os.write(write_end, b"%d\n" % bound)

                anyio.run(main, backend_options=backend_options)
                return 0

            sys.stdout.flush()
            mock_pid = supervisor.fork(run_mock)
            os.close(write_end)
            with os.fdopen(read_end) as pipe:
                upstream = f"http://127.0.0.1:{int(pipe.readline())}"
            print(f"ssekit: no --upstream given; built-in mock upstream on {upstream}")
        config = ProxyConfig(upstream=upstream, **{**settings, "listen_port": port})

        def run_worker(index: int) -> int:
            reservation.close()  # the supervisor keeps its own copy
            try:
                anyio.run(
                    lambda: _serve_until_signal(
                        config, reuse_port=True, metrics_dir=str(metrics_dir)
                    ),
                    backend_options=backend_options,
                )
            except BaseException as exc:
                error = _config_error(exc)
                if error is None:
                    raise
                print(f"ssekit: error: {error}", file=sys.stderr, flush=True)
                return 2
            finally:
                if supervisor.lifeline.gone.is_set():  # nobody else will clean up
                    remove_if_unowned(metrics_dir)
            return 0

        sys.stdout.flush()
        supervisor.start(run_worker)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not supervisor.stopping:  # ready once one accepts
            try:
                socket.create_connection((host, port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        if not supervisor.stopping:  # else told to stop while starting: drain at once
            _banner(
                f"http://{host}:{port}",
                upstream,
                config.admin_prefix,
                f"{args.workers} workers, event loop: {name}, http: {config.http}",
            )
        return supervisor.run()
    finally:
        if mock_pid is not None:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(mock_pid, signal.SIGKILL)
                os.waitpid(mock_pid, 0)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        reservation.close()
