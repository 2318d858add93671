"""I/O of the proxy: the listener, one task group per connection, deadlines, cancellation.

Decisions come from ``_relay`` and ``_headers``; this module moves bytes. Each
upstream chunk is written to the client (as one chunk) before the next upstream
read, so a slow client slows the upstream read instead of growing a buffer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from typing import Final

import anyio
import anyio.abc
import h11

from .._decoder import Decoder
from .._encoder import encode, encode_comment
from .._errors import UpstreamError
from .._event import Comment, Event
from ..openai import DONE
from ._config import ProxyConfig
from ._headers import get_header, is_event_stream, request_headers, response_headers
from ._relay import (
    REASONS,
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
from ._stats import Metrics, Outcome, StreamStats
from ._upstream import READ_SIZE, UpstreamConnection, UpstreamPool, make_ssl_context

__all__ = ("Proxy", "serve")

log = logging.getLogger("ssekit.proxy")

KEEPALIVE_IDLE: Final = 60.0
JSON: Final = b"application/json"


class ClientGone(Exception):
    """The client closed its side; raised inside one exchange only."""


def raw_response(status: int, body: bytes, content_type: bytes = JSON) -> bytes:
    """A complete ``Connection: close`` response, for answers outside h11's state machine."""
    reason = REASONS.get(status, "Error").encode()
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n"
        b"via: 1.1 ssekit\r\n\r\n" % (status, reason, content_type, len(body))
    ) + body


class _Client:
    """The downstream side of one connection: the socket and its h11 state."""

    def __init__(self, stream: anyio.abc.SocketStream, max_header_size: int) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_size)
        self.lock = anyio.Lock()
        addr = stream.extra(anyio.abc.SocketAttribute.remote_address, ("?", 0))
        self.addr = str(addr[0]) if isinstance(addr, tuple) else str(addr)
        self.last_write = time.monotonic()

    async def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            try:
                await self.stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                raise ClientGone from exc
            self.last_write = time.monotonic()

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        """The next h11 event, reading as needed; raises ClientGone on a reset."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            try:
                data = await self.stream.receive(READ_SIZE)
            except anyio.EndOfStream:
                data = b""
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                raise ClientGone from exc
            self.h11.receive_data(data)

    async def answer(
        self, status: int, body: bytes, content_type: bytes = JSON, *, close: bool = False
    ) -> None:
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
        headers.append((b"via", b"1.1 ssekit"))
        if close:
            headers.append((b"connection", b"close"))
        await self.send(h11.Response(status_code=status, headers=headers))
        await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())


class Proxy:
    """One running proxy: config, upstream pool, metrics, API-key rotation, drain state."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        ssl_context = (
            make_ssl_context(config.upstream_ca) if config.origin.scheme == "https" else None
        )
        self.pool = UpstreamPool(
            config.origin,
            size=config.pool_size,
            connect_timeout=config.connect_timeout,
            ssl_context=ssl_context,
            proxy=config.proxy_origin,
        )
        self._key = 0
        self._busy = 0
        self._idle_scopes: set[anyio.CancelScope] = set()
        self._draining = False
        self._quiet = anyio.Event()  # set when draining and no exchange is in flight
        self._connections = 0

    def _next_api_key(self) -> str | None:
        keys = self.config.api_keys
        if not keys:
            return None
        self._key = (self._key + 1) % len(keys)
        return keys[self._key]

    async def serve(
        self,
        *,
        task_status: anyio.abc.TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
        shutdown: anyio.Event | None = None,
    ) -> None:
        cfg = self.config
        listener = await anyio.create_tcp_listener(
            local_host=cfg.listen_host, local_port=cfg.listen_port, backlog=1024
        )
        address = listener.extra(anyio.abc.SocketAttribute.local_address)
        host, port = str(address[0]), int(address[1])
        accepting = anyio.CancelScope()
        stopped_accepting = anyio.Event()

        async def accept(task_group: anyio.abc.TaskGroup) -> None:
            try:
                with accepting:
                    # Connection tasks go to the outer group: they outlive accepting.
                    await listener.serve(self._connection, task_group)
            finally:
                stopped_accepting.set()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(accept, tg)
                task_status.started((host, port))
                if shutdown is None:
                    await anyio.sleep_forever()
                    return
                await shutdown.wait()
                # Drain: stop accepting, close idle keep-alive connections, let
                # exchanges in flight finish until the deadline, then cut them.
                self._draining = True
                accepting.cancel()
                await stopped_accepting.wait()
                await listener.aclose()
                for scope in list(self._idle_scopes):
                    scope.cancel()
                with anyio.move_on_after(cfg.drain_timeout):
                    if self._busy:
                        await self._quiet.wait()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()
                await self.pool.aclose()

    async def _connection(self, stream: anyio.abc.SocketStream) -> None:
        cfg = self.config
        self._connections += 1
        try:
            with contextlib.suppress(OSError):
                sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._connections > cfg.max_connections:
                with contextlib.suppress(Exception):
                    await stream.send(raw_response(503, error_body(503, "too many connections")))
                return
            client = _Client(stream, cfg.max_header_size)
            with anyio.CancelScope() as scope:
                try:
                    await self._requests(client, scope)
                except ClientGone:
                    pass
                except Exception:
                    # A bug must cost one connection, never the server.
                    log.exception("ssekit: internal error on a connection from %s", client.addr)
                finally:
                    self._idle_scopes.discard(scope)
        finally:
            self._connections -= 1
            await anyio.aclose_forcefully(stream)

    async def _requests(self, client: _Client, scope: anyio.CancelScope) -> None:
        first = True
        while not self._draining:
            # Wait for the next request head: a keep-alive connection may idle,
            # but once a head starts it must complete within header_timeout.
            self._idle_scopes.add(scope)
            try:
                request = await self._receive_head(client, first)
            finally:
                self._idle_scopes.discard(scope)
            if request is None:
                return
            first = False
            self._busy += 1
            self.metrics.active += 1
            try:
                keep = await self._exchange(client, request)
            finally:
                self._busy -= 1
                self.metrics.active -= 1
                if self._draining and not self._busy:
                    self._quiet.set()
            if not keep or client.h11.our_state is not h11.DONE:
                return
            try:
                client.h11.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _receive_head(self, client: _Client, first: bool) -> h11.Request | None:
        """The next request head, or None when the connection should just close."""
        cfg = self.config
        conn = client.h11
        try:
            if not conn.trailing_data[0]:
                # Nothing of a next request yet: the connection may idle (keep-alive).
                with anyio.move_on_after(cfg.header_timeout if first else KEEPALIVE_IDLE):
                    conn.receive_data(await client.stream.receive(READ_SIZE))
                if not conn.trailing_data[0]:
                    return None  # idle too long, nothing started: close quietly
            # A head has started: it must complete within header_timeout (slowloris).
            with anyio.fail_after(cfg.header_timeout):
                event = await client.next_event()
        except TimeoutError:  # before OSError, its base class
            await self._refuse_raw(client, 408, "request head not received in time")
            return None
        except (anyio.EndOfStream, anyio.BrokenResourceError, ClientGone, OSError):
            return None
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint if exc.error_status_hint in (400, 431) else 400
            await self._refuse_raw(client, status, f"malformed request: {exc}")
            return None
        return event if isinstance(event, h11.Request) else None

    async def _refuse_raw(self, client: _Client, status: int, message: str) -> None:
        stats = StreamStats(status=status, outcome=Outcome.BAD_REQUEST, error=message)
        with contextlib.suppress(Exception):
            with anyio.fail_after(1):
                await client.stream.send(raw_response(status, error_body(status, message)))
        self._finish(stats, time.monotonic())

    def _finish(self, stats: StreamStats, started: float) -> None:
        stats.duration = time.monotonic() - started
        self.metrics.record(stats)
        fields = stats.as_log()
        if self.config.log_format == "json":
            log.info(json.dumps(fields, ensure_ascii=False))
        else:
            log.info(" ".join(f"{k}={v}" for k, v in fields.items()))

    async def _exchange(self, client: _Client, request: h11.Request) -> bool:
        """Serve one request; True when the connection may carry another."""
        started = time.monotonic()
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("ascii", "replace")
        stats = StreamStats(method=method, path=target.split("?", 1)[0])
        decision = admit(method, target, list(request.headers), self.config)
        try:
            if isinstance(decision, Refuse):
                stats.status, stats.outcome, stats.error = (
                    decision.status,
                    decision.outcome,
                    decision.message,
                )
                await client.answer(
                    decision.status, error_body(decision.status, decision.message), close=True
                )
                return False
            if isinstance(decision, Admin):
                stats.status, stats.outcome = 200, Outcome.LOCAL
                if not await self._drain_request_body(client):
                    return False
                if decision.name == "metrics":
                    body = self.metrics.render()
                    await client.answer(200, body, b"text/plain; version=0.0.4; charset=utf-8")
                else:
                    await client.answer(200, b'{"status":"ok"}')
                return True
            return await self._forward(client, request, decision, stats, started)
        except ClientGone:
            stats.outcome = Outcome.CLIENT_DISCONNECT
            return False
        finally:
            self._finish(stats, started)

    async def _drain_request_body(self, client: _Client) -> bool:
        while True:
            event = await client.next_event()
            if isinstance(event, h11.EndOfMessage):
                return True
            if not isinstance(event, h11.Data):
                return False

    async def _request_body(self, client: _Client) -> AsyncIterator[bytes]:
        """Stream the client's request body upstream as it arrives."""
        while True:
            event = await client.next_event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise ClientGone

    async def _forward(
        self,
        client: _Client,
        request: h11.Request,
        decision: Forward,
        stats: StreamStats,
        started: float,
    ) -> bool:
        cfg = self.config
        relay = Relay()
        api_key = self._next_api_key()
        headers = request_headers(
            list(request.headers),
            origin=cfg.origin,
            client_addr=client.addr,
            api_key=api_key,
            strip_authorization=bool(cfg.client_tokens),
        )
        method = request.method.decode("ascii")
        chunked = get_header(request.headers, b"transfer-encoding") is not None
        has_body = chunked or get_header(headers, b"content-length") not in (None, b"0")
        if chunked:
            # Transfer-Encoding is hop-by-hop: our own hop streams the body chunked too.
            headers.append((b"transfer-encoding", b"chunked"))

        # Connect, retrying failures that happen before any byte went upstream.
        upstream = None
        attempt = 0
        while upstream is None:
            stats.attempts = attempt + 1
            try:
                upstream, reused = await self.pool.acquire()
            except UpstreamError as exc:
                delay = retry_delay(exc, bytes_sent=0, attempt=attempt, config=cfg)
                if delay is None:
                    return await self._fail_before_head(client, relay, stats, exc)
                attempt += 1
                await anyio.sleep(delay)
        if reused:
            self.metrics.upstream_reuses += 1
        else:
            self.metrics.upstream_connects += 1

        done = False
        try:
            try:
                body = self._request_body(client) if has_body else b""
                await upstream.send_request(method, decision.target, headers, body)
                if not has_body:
                    await self._drain_request_body(client)
            except UpstreamError as exc:
                return await self._fail_before_head(client, relay, stats, exc)
            failure: UpstreamError | None = None
            async with anyio.create_task_group() as tg:
                # From here the client is only read to notice it leaving.
                tg.start_soon(self._watch_client, client, tg.cancel_scope, stats, relay)
                try:
                    response = await upstream.receive_response(
                        first_byte_timeout=cfg.first_byte_timeout
                    )
                except UpstreamError as exc:
                    failure = exc
                    tg.cancel_scope.cancel()
                else:
                    done = await self._respond(client, upstream, response, stats, relay, started)
                    tg.cancel_scope.cancel()
            if failure is not None:
                return await self._fail_before_head(client, relay, stats, failure)
            if relay.phase is Phase.DONE:
                await client.send(h11.EndOfMessage())
                return True
            return False
        finally:
            if done:
                await self.pool.release(upstream)
            else:
                # Client gone, upstream failed, or cancelled: close at once so
                # the provider stops generating.
                await upstream.aclose()

    async def _respond(
        self,
        client: _Client,
        upstream: UpstreamConnection,
        response: h11.Response,
        stats: StreamStats,
        relay: Relay,
        started: float,
    ) -> bool:
        """Send the response head, then the body; True when it ended cleanly."""
        stats.upstream_first_byte = time.monotonic() - started
        stats.status = response.status_code
        sse = is_event_stream(get_header(response.headers, b"content-type") or b"")
        await client.send(
            h11.Response(
                status_code=response.status_code,
                headers=response_headers(list(response.headers)),
                reason=response.reason,
            )
        )
        relay.on(Input.HEAD)
        decoder = Decoder(comments=True) if sse else None
        async with anyio.create_task_group() as tg:
            if decoder is not None and self.config.heartbeat is not None:
                tg.start_soon(self._heartbeats, client, decoder, self.config.heartbeat)
            done = await self._pump(client, upstream, decoder, stats, relay, started)
            tg.cancel_scope.cancel()
        return done

    async def _fail_before_head(
        self, client: _Client, relay: Relay, stats: StreamStats, error: UpstreamError
    ) -> bool:
        relay.on(Input.TIMED_OUT if error.status == 504 else Input.UPSTREAM_FAILED)
        stats.status = relay.answer_status(error)
        stats.outcome = relay.outcome
        stats.error = str(error)
        await client.answer(stats.status, error_body(stats.status, str(error)), close=True)
        return False

    async def _watch_client(
        self, client: _Client, scope: anyio.CancelScope, stats: StreamStats, relay: Relay
    ) -> None:
        """Notice a client that goes away mid-response, and cancel the exchange at once."""
        while True:
            try:
                data = await client.stream.receive(READ_SIZE)
            except (
                anyio.EndOfStream,
                anyio.BrokenResourceError,
                anyio.ClosedResourceError,
                OSError,
            ):
                break
            # Pipelined bytes of a next request: keep them for h11.
            client.h11.receive_data(data)
        if relay.phase in (Phase.WAITING, Phase.STREAMING):
            # Otherwise the exchange already ended; the EOF is for the next request.
            relay.on(Input.CLIENT_GONE)
            stats.outcome = relay.outcome
            scope.cancel()

    async def _heartbeats(
        self, client: _Client, decoder: Decoder[Event | Comment], interval: float
    ) -> None:
        comment = encode_comment("heartbeat")
        while True:
            await anyio.sleep(max(0.0, client.last_write + interval - time.monotonic()))
            async with client.lock:
                if heartbeat_due(
                    now=time.monotonic(),
                    last_write=client.last_write,
                    interval=interval,
                    at_boundary=decoder.at_boundary,
                ):
                    await client.send(h11.Data(data=comment))
            if not decoder.at_boundary:
                # Mid-event: look again shortly rather than insert into the event.
                await anyio.sleep(min(interval, 0.05))

    async def _pump(
        self,
        client: _Client,
        upstream: UpstreamConnection,
        decoder: Decoder[Event | Comment] | None,
        stats: StreamStats,
        relay: Relay,
        started: float,
    ) -> bool:
        """Forward the body; True when it ended cleanly (the upstream may be reused)."""
        cfg = self.config
        try:
            shared = decoder is not None and cfg.heartbeat is not None
            async for chunk in upstream.receive_body(idle_timeout=cfg.idle_timeout):
                if shared:  # the heartbeat task writes too: one writer at a time
                    async with client.lock:
                        await client.send(h11.Data(data=chunk))
                else:
                    await client.send(h11.Data(data=chunk))
                if relay.phase is not Phase.STREAMING:
                    return False  # the client left while we wrote (the watcher saw it)
                relay.on(Input.CHUNK)
                stats.body_bytes += len(chunk)
                if decoder is not None:
                    self._watch_events(decoder, chunk, stats, started)
        except UpstreamError as exc:
            if relay.phase is not Phase.STREAMING:
                return False
            relay.on(Input.TIMED_OUT if exc.status == 504 else Input.UPSTREAM_FAILED)
            stats.outcome = relay.outcome
            stats.error = str(exc)
            if cfg.error_event and decoder is not None and decoder.at_boundary:
                message = json.dumps({"error": {"message": str(exc), "type": "proxy_error"}})
                with contextlib.suppress(ClientGone):
                    async with client.lock:
                        await client.send(h11.Data(data=encode(Event(event="error", data=message))))
            return False
        if relay.phase is not Phase.STREAMING:
            return False
        relay.on(Input.END)
        stats.outcome = relay.outcome
        return True

    @staticmethod
    def _watch_events(
        decoder: Decoder[Event | Comment], chunk: bytes, stats: StreamStats, started: float
    ) -> None:
        # The decoder only watches: what it sees never changes what is forwarded.
        try:
            items = decoder.feed(chunk)
        except Exception:
            return
        for item in items:
            if isinstance(item, Event):
                stats.events += 1
                if stats.first_event is None:
                    stats.first_event = time.monotonic() - started
                if item.data == DONE:
                    stats.done_seen = True


async def serve(
    config: ProxyConfig,
    *,
    task_status: anyio.abc.TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
    shutdown: anyio.Event | None = None,
) -> None:
    """Run the proxy until cancelled, or until ``shutdown`` is set (then drain).

    Binds ``config.listen_host:listen_port`` (port 0 picks a free one) and
    reports the bound ``(host, port)`` through ``task_status``, so
    ``host, port = await task_group.start(serve, config)`` works.
    """
    await Proxy(config).serve(task_status=task_status, shutdown=shutdown)
