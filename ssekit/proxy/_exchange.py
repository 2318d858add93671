"""One request through the proxy: admit, forward, answer; its outcome is set once.

The request's body streams upstream as it arrives (kept for a replay while
small); the response head goes back as soon as it comes; the body is moved by
``_pump``. Every exchange ends in exactly one log line and one metrics count,
with the outcome its :class:`Relay` reached, whatever ended it: a refusal, a
fault on either side, a client leaving, or the drain deadline.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Final

import anyio
import anyio.abc

from .._errors import ConfigError, UpstreamError
from .._http import (
    BadRequest,
    ClientGone,
    Downstream,
    FastStream,
    OriginConnection,
    OriginPool,
    RequestHead,
    ResponseHead,
    error_body,
    get_header,
    is_event_stream,
    make_ssl_context,
)
from ._config import ProxyConfig, token_index
from ._finish import Finishing
from ._headers import request_headers, response_headers, underscored
from ._histograms import OPENMETRICS, openmetrics, wants_openmetrics
from ._pump import pump
from ._record import Recorder, Take
from ._relay import (
    Admin,
    Forward,
    Input,
    Phase,
    Refuse,
    Relay,
    admit,
    bearer_token,
    retry_delay,
    retry_on_fresh_connection,
)
from ._resume import Recording, Resume, make_resume
from ._resume._endpoint import serve_streams
from ._stats import Metrics, Outcome, StreamStats
from ._status import Board, serve_status
from ._usage import (
    Meter,
    Shape,
    UsageLog,
    add_include_usage,
    new_request_id,
    request_model,
    shape_of,
    usage_record,
)

__all__ = ("Shared", "serve_exchange")

log = logging.getLogger("ssekit.proxy")

#: Request body bytes kept so the request can be sent again on a fresh
#: connection when a kept-alive one turns out closed (at least; a body read whole
#: before connecting, up to --request-buffer, is kept whole).
REPLAY_LIMIT: Final = 256 * 1024


class Shared:
    """What every exchange of one proxy shares: config, metrics, upstream pool, key rotation.

    ``cutting`` is set by the listener just before the drain deadline cancels
    the exchanges still running, so they end as ``shutdown``.
    """

    def __init__(self, config: ProxyConfig, metrics_dir: str | None = None) -> None:
        self.config = config
        self.metrics = Metrics(engine=config.http, usage_log=config.usage_log is not None)
        self.metrics.usage.max_models = config.usage_max_models
        #: --usage-log: one JSON line per exchange (reopened on SIGHUP).
        self.usage_log = (
            None
            if config.usage_log is None
            else UsageLog(config.usage_log, self.metrics.usage, config.log_format)
        )
        #: Where sibling worker processes leave their counters (None: one process).
        self.metrics_dir = None if metrics_dir is None else Path(metrics_dir)
        ssl_context = (
            make_ssl_context(config.upstream_ca) if config.origin.scheme == "https" else None
        )
        self.pool = OriginPool(
            config.origin,
            size=config.pool_size,
            connect_timeout=config.connect_timeout,
            ssl_context=ssl_context,
            proxy=config.proxy_origin,
            max_head_size=config.max_header_size,
            engine=config.http,
        )
        self.cutting = False
        self._key = 0
        # Resumable streams (--resume-store); None keeps every exchange as it was.
        self.resume: Resume | None = (
            None if config.resume_store is None else make_resume(config, self.metrics)
        )
        # --record DIR: every exchange with a response head becomes a cassette.
        self.recorder: Recorder | None = None
        if config.record is not None:
            try:
                self.recorder = Recorder(
                    config.record,
                    redact=config.record_redact,
                    secrets=(*config.api_keys, *config.client_tokens, *config.admin_tokens),
                    as_json=config.log_format == "json",
                )
            except OSError as exc:  # the directory cannot be made
                raise ConfigError(f"--record {config.record}: {exc.strerror or exc}") from exc
        #: The open and recently finished exchanges, for the status page (_status).
        self.metrics.record_on = self.recorder is not None
        self.board = Board(self.metrics, self.metrics_dir, config)
        if self.resume is not None:
            self.board.resume_health = self.resume.health

    def snapshot_path(self) -> Path | None:
        """This process's counters file among its siblings', when there are workers."""
        return None if self.metrics_dir is None else self.metrics_dir / f"{os.getpid()}.json"

    def write_snapshot(self) -> None:
        """Leave this worker's counters for its siblings (atomically: write, then rename)."""
        path = self.snapshot_path()
        if path is not None:
            self._copy_record_counts()
            scratch = path.with_suffix(".tmp")
            scratch.write_text(json.dumps(self.metrics.snapshot()))
            scratch.replace(path)
            self.board.write_share()  # only while a status page is open

    def render_metrics(self) -> bytes:
        """Prometheus text: this process's counters, plus every sibling worker's."""
        self._copy_record_counts()
        mine = self.snapshot_path()
        if self.metrics_dir is None or mine is None:
            return self.metrics.render()
        others = []
        for path in self.metrics_dir.glob("*.json"):
            if path != mine:
                with contextlib.suppress(OSError, ValueError):
                    others.append(json.loads(path.read_text()))
        return self.metrics.plus(others).render()

    def _copy_record_counts(self) -> None:
        """--record's counts (its writer thread keeps them) into the metrics, to be shown
        and summed over workers like the others."""
        if self.recorder is not None:
            self.metrics.record_cassettes = self.recorder.recorded
            self.metrics.record_dropped = self.recorder.dropped

    def next_api_key(self) -> str | None:
        keys = self.config.api_keys
        if not keys:
            return None
        self._key = (self._key + 1) % len(keys)
        return keys[self._key]

    def key_label(self) -> str:
        """The label of the key :meth:`next_api_key` returned last ("" with no keys)."""
        return self.config.key_label(self._key) if self.config.api_keys else ""

    def finish(self, stats: StreamStats, relay: Relay, started: float) -> None:
        """The one place an exchange ends: its outcome, one metrics count, one log line."""
        stats.outcome = relay.outcome
        stats.duration = time.monotonic() - started
        if stats.shape is not None:
            stats.partial = stats.outcome is not Outcome.COMPLETE
            if stats.events_delivered is not None and stats.outcome is Outcome.COMPLETE:
                # --on-client-disconnect finish: read to its end, but its client left.
                stats.outcome = Outcome.CLIENT_DISCONNECT
        self.metrics.record(stats)
        if self.usage_log is not None and stats.outcome is not Outcome.LOCAL:
            stats.request_id = new_request_id()
            self.usage_log.write(usage_record(stats))
        if stats.usage.value == "invalid" and not self.metrics.usage.invalid_logged:
            self.metrics.usage.invalid_logged = True  # once: the metrics count every one
            log.warning(
                "ssekit: %s %s: the upstream reported a usage object with a non-integer or "
                "negative count; its usage is 'invalid' (ssekit_usage_exchanges_total counts "
                "them; this is said once)",
                stats.method,
                stats.path,
            )
        self.board.ended(stats)
        if self.config.no_access_log and not stats.error and stats.outcome in _QUIET:
            return
        fields = stats.as_log()
        if self.config.log_format == "json":
            log.info(json.dumps(fields, ensure_ascii=False))
        else:
            log.info(" ".join(f"{k}={v}" for k, v in fields.items()))


#: With --no-access-log, exchanges with these outcomes (and no error) are not logged.
_QUIET: Final = frozenset({Outcome.COMPLETE, Outcome.LOCAL})


class RequestBody:
    """The client's request body as it arrives, kept while small so it can be sent again.

    Iterating yields what was read so far first, then reads on from the client
    (each read bounded by ``timeout``). ``replayable`` stays true while every
    byte read so far is kept (``keep`` bytes, or what :meth:`prefetch` held).
    """

    def __init__(self, client: Downstream, timeout: float, keep: int = REPLAY_LIMIT) -> None:
        self._client = client
        self._timeout = timeout
        self._keep = keep
        self._kept: list[bytes] = []
        self._kept_size = 0
        self._prefetching = False
        self._reader = self._read()
        self.replayable = True
        self.complete = False

    async def _read(self) -> AsyncIterator[bytes]:
        async for piece in self._client.body(self._timeout):
            if self.replayable:
                self._kept.append(piece)
                self._kept_size += len(piece)
                if self._kept_size > self._keep and not self._prefetching:
                    self._kept.clear()
                    self.replayable = False
            yield piece
        self.complete = True

    async def prefetch(self, limit: int) -> bytes | None:
        """Read the body until it ends or passes ``limit`` bytes, before any upstream
        connection is opened: a client sending its body slowly costs the provider
        nothing meanwhile. Returns the whole body when it ended within the limit,
        else None (what was read is held, and iterated first)."""
        self._prefetching = True
        try:
            async for _ in self._reader:
                if self._kept_size > limit:
                    return None
        finally:
            self._prefetching = False
        return b"".join(self._kept)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in list(self._kept):  # read before this pass (kept, or prefetched)
            yield piece
        if not self.complete:
            async for piece in self._reader:
                yield piece


async def discard_body(client: Downstream, read_timeout: float) -> None:
    """Read the request body to its end, keeping nothing (each read within ``read_timeout``)."""
    async for _ in client.body(read_timeout):
        pass


async def serve_exchange(shared: Shared, client: Downstream, request: RequestHead) -> bool:
    """Serve one request; True when the connection may carry another."""
    started = time.monotonic()
    relay = Relay()
    target = request.target.decode("ascii", "replace")
    method = request.method.decode("ascii", "replace")
    stats = StreamStats(client=client.addr, method=method, path=target.split("?")[0])
    stats.shape = shape_of(method, stats.path)
    shared.board.opened(stats)
    keep = False
    take = None if shared.recorder is None else shared.recorder.take(started)  # --record
    try:
        keep = await _serve(shared, client, request, target, relay, stats, started, take)
    except ClientGone:
        if relay.open:
            relay.on(Input.CLIENT_GONE)
    except BadRequest as exc:
        # The client's fault (malformed or stalled body): 400/408 while no
        # response head went out, else its response is cut.
        stats.error = exc.message
        answer = relay.phase is Phase.WAITING
        if relay.open:
            relay.on(Input.BAD_REQUEST)
        if answer:
            stats.status = exc.status
            try:
                await client.answer(exc.status, error_body(exc.status, exc.message), close=True)
            except ClientGone:
                pass
    except Exception:
        # A bug must cost one exchange, never the server.
        log.exception("ssekit: internal error serving %s %s", stats.method, stats.path)
        if relay.open:
            relay.on(Input.BUG)
    finally:
        if relay.open:
            # Only the drain deadline cancels an exchange from outside.
            relay.on(Input.SHUTDOWN if shared.cutting else Input.BUG)
        if client.stalled and not stats.error:
            stats.error = (
                f"the client took none of the response for {client.send_timeout:g}s "
                "(--send-timeout): cut"
            )
        if take is not None:  # --record: the cassette ends as the exchange did
            take.end(relay.outcome.value)
        shared.finish(stats, relay, started)
    return keep


async def _serve(
    shared: Shared,
    client: Downstream,
    request: RequestHead,
    target: str,
    relay: Relay,
    stats: StreamStats,
    started: float,
    take: Take | None = None,
) -> bool:
    cfg = shared.config
    decision = admit(stats.method, target, request.headers, cfg, request.http_version)
    if isinstance(decision, Refuse):
        relay.on(decision.input)
        stats.status = decision.status
        stats.error = decision.message
        await client.answer(
            decision.status, error_body(decision.status, decision.message), close=True
        )
        return False
    if isinstance(decision, Admin):
        await discard_body(client, cfg.body_timeout)
        if decision.name == "streams" and shared.resume is not None:  # resume hook
            return await serve_streams(shared.resume, client, request, relay, stats)
        if decision.name in ("status", "events"):  # the status page and its feed
            return await serve_status(shared, client, request, relay, stats, decision.name)
        if decision.name == "metrics":
            body = shared.render_metrics()
            if wants_openmetrics(get_header(request.headers, b"accept")):
                await client.answer(200, openmetrics(body), OPENMETRICS)
            else:
                await client.answer(200, body, b"text/plain; version=0.0.4; charset=utf-8")
        else:  # health: forwarding is up; with the resume store, its state beside it
            health = {} if shared.resume is None else shared.resume.health()
            body = json.dumps({"status": "ok", **health}, separators=(",", ":")).encode()
            await client.answer(200, body)
        stats.status = 200
        relay.on(Input.LOCAL)
        return True
    if shared.resume is None:
        return await _forward(shared, client, request, decision, relay, stats, started, take=take)
    # Resume hook: the stream id, claimed (a bad or taken ssekit-resume-key: 4xx, nothing sent).
    recording = await shared.resume.begin(request, stats)
    try:
        return await _forward(
            shared, client, request, decision, relay, stats, started, recording, take=take
        )
    finally:
        await recording.close()


async def _forward(
    shared: Shared,
    client: Downstream,
    request: RequestHead,
    decision: Forward,
    relay: Relay,
    stats: StreamStats,
    started: float,
    recording: Recording | None = None,
    *,
    take: Take | None = None,
) -> bool:
    cfg = shared.config
    if cfg.client_tokens:  # usage hook: whose token (admitted: it is one of them)
        index = token_index(bearer_token(request.headers), cfg.client_tokens)
        stats.client_label = "" if index is None else cfg.client_label(index)
    headers = request_headers(
        request.headers,
        origin=cfg.origin,
        client_addr=client.addr,
        api_key=shared.next_api_key(),
        strip_authorization=bool(cfg.client_tokens),
        underscores=cfg.underscores_in_headers,
    )
    stats.key_label = shared.key_label()
    if not cfg.underscores_in_headers:
        stats.dropped_headers = underscored(request.headers)
    if recording is not None:
        recording.strip(headers)  # resume hook: ssekit-resume-key is not the upstream's
    method = request.method.decode("ascii")
    chunked = get_header(request.headers, b"transfer-encoding") is not None
    body: RequestBody | bytes = b""
    if chunked or get_header(headers, b"content-length") not in (None, b"0"):
        body = RequestBody(client, cfg.body_timeout, max(REPLAY_LIMIT, cfg.request_buffer))
        whole = await body.prefetch(cfg.request_buffer) if cfg.request_buffer else None
        if whole is not None:
            body = whole
            if chunked:  # read whole: sent with its length, as nginx sends a buffered body
                headers.append((b"content-length", b"%d" % len(whole)))
                chunked = False
    else:
        await discard_body(client, cfg.body_timeout)  # an empty body ends at once
    sent = body if isinstance(body, bytes) else b""  # as the client sent it, for --record
    if stats.shape is not None and isinstance(body, bytes) and body:  # usage hook
        stats.model = request_model(body)
        if cfg.include_usage and stats.shape is Shape.CHAT:
            rewritten = add_include_usage(body)
            if rewritten is not None:
                body = rewritten
                headers = [h for h in headers if h[0].lower() != b"content-length"]
                headers.append((b"content-length", b"%d" % len(body)))
    meter = None if stats.shape is None else Meter(stats.shape, stats, started, time.monotonic)
    if chunked:
        # Transfer-Encoding is hop-by-hop: our own hop streams the body chunked too.
        headers.append((b"transfer-encoding", b"chunked"))
    if take is not None:  # --record: a body streamed on (past --request-buffer) is not kept
        take.request(method, decision.target, request.headers, sent)

    attempt = 0
    reuse = True
    while True:
        stats.attempts += 1
        try:
            upstream, reused = await shared.pool.acquire(reuse=reuse)
        except UpstreamError as exc:
            delay = retry_delay(exc, attempt=attempt, config=cfg)
            if delay is None:
                return await _fail_before_head(client, relay, stats, exc)
            attempt += 1
            await anyio.sleep(delay)
            continue
        if reused:
            shared.metrics.upstream_reuses += 1
        else:
            shared.metrics.upstream_connects += 1
        done = False
        try:
            failure: UpstreamError | None
            try:
                await upstream.send_request(
                    method,
                    decision.target,
                    headers,
                    body,
                    stall_limit=cfg.first_byte_timeout,  # an upstream that stops reading
                )
            except UpstreamError as exc:
                failure = exc
            else:
                failure, done = await _answer(
                    shared, client, upstream, relay, stats, started, recording, take, meter
                )
                if failure is None:
                    return done
            if retry_on_fresh_connection(
                reused=reused,
                bytes_received=upstream.bytes_received,
                replayable=isinstance(body, bytes) or body.replayable,
            ):
                reuse = False
                continue
            return await _fail_before_head(client, relay, stats, failure)
        finally:
            if done:
                await shared.pool.release(upstream)
            else:
                # Client gone, upstream failed, or cancelled: close at once so
                # the provider stops generating.
                await upstream.aclose()


async def _answer(
    shared: Shared,
    client: Downstream,
    upstream: OriginConnection,
    relay: Relay,
    stats: StreamStats,
    started: float,
    recording: Recording | None = None,
    take: Take | None = None,
    meter: Meter | None = None,
) -> tuple[UpstreamError | None, bool]:
    """Wait for the response head and forward the response, watching the client leave.

    Returns the failure before the head (for the caller to retry or answer),
    and whether the response ended cleanly (the upstream may be reused).
    """
    cfg = shared.config
    failure: UpstreamError | None = None
    done = False
    if recording is not None:  # resume hook: the client may leave while the stream is kept
        client = recording.wrap(client)
    elif meter is not None and cfg.on_client_disconnect == "finish":  # usage hook
        client = Finishing(client, stats, cfg.finish_timeout)
    try:
        # From here the client is only read to notice it leaving.
        async with _watching(client, relay, cfg.max_header_size):
            try:
                response = await upstream.receive_response(
                    first_byte_timeout=cfg.first_byte_timeout,
                    informational=partial(_pass_on, client),
                )
            except UpstreamError as exc:
                failure = exc
            else:
                stats.upstream_first_byte = time.monotonic() - started
                stats.status = response.status_code
                content_type = get_header(response.headers, b"content-type") or b""
                headers = response_headers(response.headers, response.status_code)
                if recording is not None:  # resume hook: keep a 200 event stream
                    await recording.arm(response.status_code, content_type, headers)
                if take is not None:  # --record: the upstream's head, as it came
                    take.head(response.status_code, response.reason, response.headers)
                head = client.conn.send_response(response.status_code, headers, response.reason)
                relay.on(Input.HEAD)  # written by pump, with the first body bytes if here
                done = await pump(
                    client,
                    upstream,
                    relay,
                    stats,
                    cfg,
                    started=started,
                    sse=is_event_stream(content_type),
                    read_to_close=upstream.read_to_close,
                    sized=get_header(headers, b"content-length") is not None,
                    head=head,
                    record=recording,
                    cassette=take,
                    meter=meter,
                )
    except* ClientGone:
        if relay.open:
            relay.on(Input.CLIENT_GONE)
    finally:
        if recording is not None:  # resume hook: the stored stream ends as this one did
            recording.end(relay.phase is Phase.DONE, shutdown=shared.cutting)
        if meter is not None:
            meter.close()  # a non-streamed answer's usage
    return failure, done


async def _pass_on(client: Downstream, head: ResponseHead) -> None:
    """Forward a 1xx response (RFC 9110 15.2: a proxy must), except to an HTTP/1.0
    client, which must get none."""
    conn = client.conn
    if (conn.their_http_version or b"1.0") >= b"1.1":
        headers = response_headers(head.headers, head.status_code)
        await client.send_raw(conn.send_informational(head.status_code, headers, head.reason))


async def _fail_before_head(
    client: Downstream, relay: Relay, stats: StreamStats, error: UpstreamError
) -> bool:
    relay.on(Input.TIMED_OUT if error.status == 504 else Input.UPSTREAM_FAILED)
    stats.status = relay.answer_status(error)
    stats.error = str(error)
    await client.answer(stats.status, error_body(stats.status, str(error)), close=True)
    return False


@contextlib.asynccontextmanager
async def _watching(client: Downstream, relay: Relay, max_held: int) -> AsyncIterator[None]:
    """Notice a client that goes away mid-exchange, and cancel the exchange at once.

    A :class:`FastStream` reports the departure from its transport callback (no task);
    anyio's streams, and a client whose ``wait_gone`` differs, get a watching task.
    """
    stream = client.stream
    if isinstance(stream, FastStream) and type(client) is Downstream:
        with anyio.CancelScope() as scope:
            stream.watch_gone(lambda: _gone(relay, scope), max_held)
            try:
                yield
            finally:
                stream.watch_gone(None)
        return
    async with anyio.create_task_group() as tg:
        tg.start_soon(_watch_client, client, tg.cancel_scope, relay, max_held)
        yield
        tg.cancel_scope.cancel()


async def _watch_client(
    client: Downstream, scope: anyio.CancelScope, relay: Relay, max_held: int
) -> None:
    await client.wait_gone(max_held)
    _gone(relay, scope)


def _gone(relay: Relay, scope: anyio.CancelScope) -> None:
    if relay.open:
        # Otherwise the exchange already ended; the EOF is for the next request.
        relay.on(Input.CLIENT_GONE)
        scope.cancel()
