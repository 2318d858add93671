"""Connections in and out: bind, accept, limits, keep-alive, drain.

One job: hand each request head of each connection to ``serve_exchange``, and
keep the process serving whatever the clients do (out of descriptors, too many
connections, slow or idle ones). Decisions about a request live in ``_relay``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections import deque
from typing import Final

import anyio
import anyio.abc
import anyio.streams.stapled
import anyio.to_thread

from .._errors import ConfigError
from .._http import (
    BadRequest,
    ClientGone,
    Downstream,
    FastStream,
    RequestHead,
    Stream,
    accept,
    close_now,
    error_body,
    on_asyncio,
    raw_response,
)
from ._config import ProxyConfig
from ._exchange import Shared, serve_exchange
from ._relay import Input, Relay
from ._stats import Metrics, StreamStats, report

try:
    import resource
except ImportError:  # not on every OS; the descriptor check is then skipped
    resource = None  # type: ignore[assignment]

__all__ = ("Proxy", "Turns", "check_descriptor_limit", "serve")

log = logging.getLogger("ssekit.proxy")

KEEPALIVE_IDLE: Final = 60.0
#: Descriptors the process needs besides its connections (stdio, the loop, the listener).
RESERVED_DESCRIPTORS: Final = 16
#: Pause before accepting again after a failed accept, doubled up to ACCEPT_BACKOFF_MAX.
ACCEPT_BACKOFF: Final = 0.01
ACCEPT_BACKOFF_MAX: Final = 1.0
#: How often a worker leaves its counters for its siblings' /metrics (seconds).
METRICS_EVERY: Final = 1.0
#: Requests that may begin in one event-loop turn (see :class:`Turns`).
STARTS_PER_TURN: Final = 4
#: How long a connection over --max-connections may take to send its request head, read
#: only so that the 503's log line names the request (clients send it with the connect).
OVERLOADED_HEAD_WAIT: Final = 0.5


def check_descriptor_limit(config: ProxyConfig) -> None:
    """Make sure the process may open the descriptors ``max_connections`` needs.

    Each streaming connection holds two (client and upstream), plus the idle
    pool. Raises the soft limit up to the hard one when that is enough, else
    raises :class:`ConfigError` saying what to change.
    """
    if resource is None:
        return
    needed = 2 * config.max_connections + config.pool_size + RESERVED_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard == resource.RLIM_INFINITY or hard >= needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        return
    fits = max(1, (hard - config.pool_size - RESERVED_DESCRIPTORS) // 2)
    raise ConfigError(
        f"--max-connections {config.max_connections} needs about {needed} file descriptors "
        f"(two per streaming connection, plus --pool-size {config.pool_size} and "
        f"{RESERVED_DESCRIPTORS} for the process), but the descriptor limit is {hard} "
        f"(ulimit -n); raise it (ulimit -n {needed}) or lower --max-connections to {fits}"
    )


class Turns:
    """Let at most ``per_turn`` requests begin per event-loop turn; the rest wait in order.

    Beginning a request (parsing its head, connecting upstream, sending it, and
    later its response head) is the proxy's costliest work. The loop polls its
    sockets again only once a turn's ready work is done, so when a burst of
    requests all begin in one turn, every open stream's next event and every
    earlier request's answer waits behind the whole burst: 100 requests at once
    held events back by ~15 ms. A few per turn keep each turn short, and requests
    are answered in the order they came (as nginx takes one accepted connection
    per event). An idle proxy never waits here. Off asyncio (trio), every request
    begins at once.
    """

    def __init__(self, per_turn: int) -> None:
        self.per_turn = per_turn
        self._left = per_turn
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticking = False

    async def take(self) -> None:
        """Return once this request may begin (at once while this turn has room)."""
        loop = self._loop
        if loop is None:
            if not on_asyncio():
                return  # no turns to count: every request begins at once
            loop = self._loop = asyncio.get_running_loop()
        if not self._ticking:
            self._ticking = True
            loop.call_soon(self._tick)
        if not self._waiting and self._left > 0:
            self._left -= 1
            return
        waiter = loop.create_future()
        self._waiting.append(waiter)
        await waiter  # a cancelled waiter is skipped by _tick

    def _tick(self) -> None:
        """Once per turn while there is demand: refill, and wake the next waiters."""
        self._left = self.per_turn
        while self._waiting and self._left > 0:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._left -= 1
        self._ticking = bool(self._waiting) or self._left < self.per_turn
        if self._ticking:
            assert self._loop is not None
            self._loop.call_soon(self._tick)


class Proxy:
    """One running proxy: the listener, its connections, and the state exchanges share."""

    def __init__(
        self, config: ProxyConfig, *, reuse_port: bool = False, metrics_dir: str | None = None
    ) -> None:
        self.config = config
        self._reuse_port = reuse_port
        try:
            self.shared = Shared(config, metrics_dir)
        except OSError as exc:  # the CA file: missing or unreadable
            raise ConfigError(f"--upstream-ca {config.upstream_ca}: {exc.strerror or exc}") from exc
        self._busy = 0
        self._idle_scopes: set[anyio.CancelScope] = set()
        self._draining = False
        self._quiet = anyio.Event()  # set when draining and no exchange is in flight
        self._connections = 0
        self._accept_failing = False
        self._turns = Turns(STARTS_PER_TURN)
        self.shared.board.connections = lambda: self._connections

    @property
    def metrics(self) -> Metrics:
        return self.shared.metrics

    async def _bind(self) -> anyio.streams.stapled.MultiListener[anyio.abc.SocketStream]:
        cfg = self.config
        check_descriptor_limit(cfg)
        try:
            return await anyio.create_tcp_listener(
                local_host=cfg.listen_host,
                local_port=cfg.listen_port,
                backlog=1024,
                reuse_port=self._reuse_port,
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {cfg.listen_host}:{cfg.listen_port}: "
                f"{exc.strerror or exc}; choose another --listen address or stop what uses it"
            ) from exc

    async def serve(
        self,
        *,
        task_status: anyio.abc.TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
        shutdown: anyio.Event | None = None,
    ) -> None:
        cfg = self.config
        listener = await self._bind()
        address = listener.extra(anyio.abc.SocketAttribute.local_address)
        host, port = str(address[0]), int(address[1])
        try:
            async with anyio.create_task_group() as tg:
                accepting = anyio.CancelScope()

                async def accept_all() -> None:
                    with accepting:
                        async with anyio.create_task_group() as loops:
                            for one in listener.listeners:  # one per address bound
                                assert isinstance(one, anyio.abc.SocketListener)
                                # Connections go to the outer group: they outlive accepting.
                                loops.start_soon(self._accept, one, tg)

                if self.shared.resume is not None:  # the resume store's background work
                    await tg.start(self.shared.resume.store.run)
                tg.start_soon(accept_all)
                if self.shared.metrics_dir is not None:
                    tg.start_soon(self._share_metrics)
                task_status.started((host, port))
                if shutdown is None:
                    await anyio.sleep_forever()
                    return
                await shutdown.wait()
                # Drain: stop accepting, close idle keep-alive connections, let
                # exchanges in flight finish until the deadline, then cut them.
                self._draining = True
                self.shared.board.closing = True  # status feeds end: they hold no stream
                accepting.cancel()
                await listener.aclose()
                for scope in list(self._idle_scopes):
                    scope.cancel()
                with anyio.move_on_after(cfg.drain_timeout):
                    if self._busy:
                        await self._quiet.wait()
                self.shared.cutting = True
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()
                await self.shared.pool.aclose()
                if self.shared.resume is not None:
                    await self.shared.resume.store.aclose()
                if self.shared.recorder is not None:  # --record: what is queued is written
                    await anyio.to_thread.run_sync(self.shared.recorder.close)

    async def _share_metrics(self) -> None:
        """Leave this worker's counters for its siblings every METRICS_EVERY seconds."""
        try:
            while True:
                self.shared.write_snapshot()
                await anyio.sleep(METRICS_EVERY)
        finally:
            with contextlib.suppress(OSError):
                path = self.shared.snapshot_path()
                if path is not None:
                    path.unlink()

    async def _accept(self, listener: anyio.abc.SocketListener, tg: anyio.abc.TaskGroup) -> None:
        """Accept until cancelled; a failed accept (EMFILE...) pauses, never stops, serving.

        On asyncio, connections become :class:`FastStream`s (the hot path without
        anyio's per-operation tolls); elsewhere anyio's own streams.
        """
        raw = listener.extra(anyio.abc.SocketAttribute.raw_socket) if on_asyncio() else None
        backoff = ACCEPT_BACKOFF
        while True:
            try:
                stream: Stream = await (accept(raw) if raw is not None else listener.accept())
            except anyio.ClosedResourceError:
                return
            except OSError as exc:
                self.metrics.accept_errors += 1
                if not self._accept_failing:
                    self._accept_failing = True
                    report(
                        logging.ERROR,
                        f"ssekit: accepting connections failed ({_describe(exc)}); pausing "
                        "accepts until descriptors free up. Raise the descriptor limit "
                        "(ulimit -n) or lower --max-connections; counted in "
                        "ssekit_accept_errors_total",
                        {"notice": "accept_failing", "errno": errno.errorcode.get(exc.errno or 0)},
                        as_json=self.config.log_format == "json",
                    )
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, ACCEPT_BACKOFF_MAX)
                continue
            if self._accept_failing:
                self._accept_failing = False
                report(
                    logging.WARNING,
                    "ssekit: accepting connections again",
                    {"notice": "accepting_again"},
                    as_json=self.config.log_format == "json",
                )
            backoff = ACCEPT_BACKOFF
            tg.start_soon(self._connection, stream)

    async def _connection(self, stream: Stream) -> None:
        self._connections += 1
        try:
            if not isinstance(stream, FastStream):  # accept() set it on a FastStream's socket
                with contextlib.suppress(OSError, AttributeError):
                    sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            cfg = self.config
            client = Downstream(
                stream,
                cfg.max_header_size,
                send_timeout=cfg.send_timeout,
                max_header_count=cfg.max_header_count,
                max_body_size=cfg.max_body_size,
                engine=cfg.http,
            )
            if self._connections > cfg.max_connections:
                await self._refuse_overloaded(client)
                return
            with anyio.CancelScope() as scope:
                try:
                    await self._requests(client, scope)
                except* ClientGone:
                    pass
                except* Exception as group:
                    # A bug must cost one connection, never the server.
                    log.error(
                        "ssekit: internal error on a connection from %s",
                        client.addr,
                        exc_info=group,
                    )
                finally:
                    self._idle_scopes.discard(scope)
        finally:
            self._connections -= 1
            await close_now(stream)

    async def _requests(self, client: Downstream, scope: anyio.CancelScope) -> None:
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
                keep = await serve_exchange(self.shared, client, request)
            finally:
                self._busy -= 1
                self.metrics.active -= 1
                if self._draining and not self._busy:
                    self._quiet.set()
            if not keep or not client.conn.reusable:
                return
            client.conn.start_next_cycle()

    async def _receive_head(self, client: Downstream, first: bool) -> RequestHead | None:
        """The next request head, or None when the connection should just close."""
        cfg = self.config
        conn = client.conn
        try:
            if not conn.has_data:
                # Nothing of a next request yet: the connection may idle (keep-alive).
                try:
                    idle = cfg.header_timeout if first else KEEPALIVE_IDLE
                    conn.receive_data(await client.receive(idle))
                except TimeoutError:
                    return None  # idle too long, nothing started: close quietly
                if not conn.has_data:
                    return None  # closed, nothing started
            # A head has started: it must complete within header_timeout (slowloris).
            await self._turns.take()
            event = await client.next_event(deadline=time.monotonic() + cfg.header_timeout)
        except TimeoutError:
            await self._refuse_raw(client, 408, "request head not received in time")
            return None
        except ClientGone:
            return None
        except BadRequest as exc:
            await self._refuse_raw(client, exc.status, exc.message)
            return None
        return event if isinstance(event, RequestHead) else None

    async def _refuse_overloaded(self, client: Downstream) -> None:
        """503 for a connection over ``max_connections``, once its request head is read
        (so the log line says which request was refused), waiting little for it."""
        stats = StreamStats(client=client.addr)
        with contextlib.suppress(TimeoutError, BadRequest, ClientGone):
            head = await client.next_event(deadline=time.monotonic() + OVERLOADED_HEAD_WAIT)
            if isinstance(head, RequestHead):
                stats.method = head.method.decode("ascii", "replace")
                stats.path = head.target.decode("ascii", "replace").split("?")[0]
        await self._refuse_raw(client, 503, "too many connections", Input.OVERLOADED, stats)

    async def _refuse_raw(
        self,
        client: Downstream,
        status: int,
        message: str,
        why: Input = Input.BAD_REQUEST,
        stats: StreamStats | None = None,
    ) -> None:
        """Answer outside the connection's state (it may be broken), then close."""
        relay = Relay()
        relay.on(why)
        if stats is None:
            stats = StreamStats(client=client.addr)
        stats.status, stats.error = status, message
        started = time.monotonic()
        with contextlib.suppress(ClientGone), anyio.move_on_after(1):
            await client.send_raw(raw_response(status, error_body(status, message)))
        self.shared.finish(stats, relay, started)


def _describe(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return f"{name}: {exc.strerror or exc}"


async def serve(
    config: ProxyConfig,
    *,
    task_status: anyio.abc.TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
    shutdown: anyio.Event | None = None,
    reuse_port: bool = False,
    metrics_dir: str | None = None,
) -> None:
    """Run the proxy until cancelled, or until ``shutdown`` is set (then drain).

    Binds ``config.listen_host:listen_port`` (port 0 picks a free one) and
    reports the bound ``(host, port)`` through ``task_status``, so
    ``host, port = await task_group.start(serve, config)`` works. Raises
    :class:`ConfigError` when it cannot listen, or the descriptor limit is too
    low for ``max_connections``. Worker processes pass ``reuse_port`` (to share
    the port, SO_REUSEPORT) and ``metrics_dir`` (to sum their counters).
    """
    proxy = Proxy(config, reuse_port=reuse_port, metrics_dir=metrics_dir)
    await proxy.serve(task_status=task_status, shutdown=shutdown)
