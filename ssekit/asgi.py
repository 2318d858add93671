"""Stream server-sent events over ASGI ``send``, watching ``receive`` for the disconnect.

No framework: :func:`stream_events` works under any ASGI server (uvicorn,
hypercorn, granian) and :class:`EventStreamResponse` is a plain ASGI app;
:mod:`ssekit.starlette` wraps it for Starlette and FastAPI.

What it guarantees:

- Each item leaves in its own ``http.response.body`` message, encoded by
  :func:`ssekit.encode`: :class:`ssekit.Event`; ``str`` (the data of a
  message event); ``bytes`` (already-encoded wire bytes, written as they are);
  ``dict`` (the fields by name, ``data``/``event``/``id``/``retry``, or a
  ``comment``, as sse-starlette users write them).
- An ``http.disconnect`` stops the producer at once: the stream stops, an
  async generator gets ``aclose()`` (its ``finally`` runs), a sync one
  ``close()`` after its current step; no task outlives the call and nothing
  is raised or logged.
- A sync producer (any iterable but a list or tuple) is stepped in a daemon
  thread of its stream's own, under :func:`producer_limiter`, never in
  anyio's worker threads, which the app's ``def`` endpoints need. It can
  expect one ``next()`` at a time, all from that thread; its exceptions
  raised in the stream; ``close()`` once, from that thread, after its last
  step. It cannot expect a ``next()`` that blocks to be interrupted (no
  thread can be): on a disconnect or shutdown the stream ends without
  waiting for it, and ``close()`` runs when that step returns; one that
  never returns holds its thread until the process exits (a daemon thread
  does not keep it running). Wait on what may never come in an async
  producer instead.
- ``ping`` seconds without a write sends a ``: ping`` comment, only between
  events (bytes items are tracked by a :class:`ssekit.Decoder`, so a ping
  never lands inside an event written in pieces).
- ``send_timeout`` bounds each write to a stuck client: past it the producer
  is closed and :class:`TimeoutError` raised (the server then drops the
  connection).
- Server shutdown ends open streams cleanly: the body is ended (the client
  sees a complete response, and an EventSource reconnects with
  Last-Event-ID), the producer is closed, nothing is logged. Three ways in:

  - SIGTERM or SIGINT, when the server catches them with a Python handler
    (uvicorn does). When a stream starts in the main thread, that handler
    is wrapped by one that first ends every open stream, then calls it: the
    server's own behaviour (uvicorn's graceful exit, its force-quit on a
    second Ctrl-C) stays as it was, and a stream starting after the signal
    is ended right after its head. So plain ``uvicorn app:app`` exits
    promptly on SIGTERM with streams open, without
    ``--timeout-graceful-shutdown``. Nothing is patched: when the server
    puts back its predecessor's handler on exit, the wrapper goes with it.
  - :func:`end_streams`, for a shutdown of your own: a server run in a
    thread or catching signals some other way, a test. (Not from a lifespan
    shutdown handler under uvicorn: it runs only once open requests ended.)
  - The server cancelling the request (uvicorn's ``--timeout-graceful-shutdown``
    expiring, say): the cancellation is not re-raised, since the response is
    complete and there is nothing left to cancel.
- A producer that raises mid-stream leaves the body unterminated, so the
  client sees a cut stream, never a clean end; the error propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
)
from types import FrameType
from typing import Any, Final

import anyio
from anyio.lowlevel import RunVar

from ._decoder import Decoder
from ._encoder import encode, encode_comment, encode_parts
from ._event import Event

__all__ = (
    "DEFAULT_HEADERS",
    "EventStreamResponse",
    "Item",
    "encode_item",
    "end_streams",
    "producer_limiter",
    "response_headers",
    "stream_events",
)

Message = MutableMapping[str, Any]  # ASGI messages are dicts of any values
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: What a producer may yield.
Item = Event | str | bytes | bytearray | memoryview | Mapping[str, object]

#: The response headers of an event stream (a caller's header of the same name wins).
DEFAULT_HEADERS: Final = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx passes the stream on live
)

_PING: Final = encode_comment("ping")
#: How long closing a producer may take once the stream is over (seconds).
_CLOSE_TIMEOUT: Final = 5.0
_FIELDS: Final = frozenset({"data", "event", "id", "retry"})
#: The signals whose handlers are wrapped to end the open streams first.
_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


def encode_item(item: Item) -> bytes:
    """The wire bytes of one item a producer yielded.

    In: an Event, a str (the data of a message event), bytes (returned as
    they are) or a mapping of fields (``data``, ``event``, ``id``, ``retry``;
    or only ``comment``). Out: bytes. Raises :class:`ssekit.EncodeError` for
    what SSE cannot carry, :class:`TypeError` for another type or field name.
    """
    # Exact types first: isinstance(item, Mapping) is an ABC check, and this runs per item.
    if type(item) is dict:
        return _encode_fields(item)
    if type(item) is Event:
        return encode(item)
    if type(item) is str:
        return encode(Event(data=item))
    if type(item) is bytes:
        return item
    if isinstance(item, Event):
        return encode(item)
    if isinstance(item, str):
        return encode(Event(data=item))
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    if isinstance(item, Mapping):
        return _encode_fields(item)
    raise TypeError(
        f"an event stream item must be an Event, str, bytes or dict, got {type(item).__name__}"
    )


def _encode_fields(fields: Mapping[str, object]) -> bytes:
    if fields.keys() <= _FIELDS:
        data = fields.get("data", "")
        event = fields.get("event", "message")
        ident = fields.get("id", "")
        retry = fields.get("retry")
        if (
            type(data) is str
            and type(event) is str
            and type(ident) is str
            and (retry is None or type(retry) is int)
        ):
            return encode_parts(data, event, ident, retry)  # no Event built, per item
        return encode(Event(**fields))  # type: ignore[arg-type]  # Event checks the types
    if fields.keys() == {"comment"}:
        text = fields["comment"]
        if not isinstance(text, str):
            raise TypeError(f"comment must be a str, got {type(text).__name__}")
        return encode_comment(text)
    raise TypeError(
        f"unknown event fields {sorted(fields.keys() - _FIELDS)}; use data, event, id and "
        "retry (or comment alone)"
    )


def response_headers(
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
) -> list[tuple[bytes, bytes]]:
    """The event stream's headers with the caller's ``headers`` (which win by name) added.

    In: a mapping or pairs of str. Out: ASGI header pairs, names lower-cased.
    """
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    given = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in pairs]
    names = {name for name, _ in given}
    return [*(pair for pair in DEFAULT_HEADERS if pair[0] not in names), *given]


class _Writer:
    """Writes to ``send``: one message per item, ``send_timeout`` per write, pings at boundaries."""

    def __init__(self, send: Send, send_timeout: float | None, ping: float | None) -> None:
        self._send = send
        self._timeout = send_timeout
        self._lock = anyio.Lock() if ping is not None else None
        self._decoder: Decoder[Event] | None = None  # only once a bytes item was seen
        self.last_write = time.monotonic()
        self.started = False
        self.finished = False

    @property
    def at_boundary(self) -> bool:
        return self._decoder is None or self._decoder.at_boundary

    async def write(self, item: Item) -> None:
        data = encode_item(item)
        if self._lock is not None and not isinstance(item, Event | str | Mapping):
            # Pings are on, and raw bytes may end mid-event: follow them, so
            # that pings stay between events.
            if self._decoder is None:
                self._decoder = Decoder()
            self._decoder.feed(data)
        await self._body(data, more=True)

    async def ping(self, interval: float) -> None:
        """Send ``: ping`` when ``interval`` passed without a write, at an event boundary."""
        while True:
            await anyio.sleep(max(0.0, self.last_write + interval - time.monotonic()))
            if time.monotonic() - self.last_write >= interval and self.at_boundary:
                await self._body(_PING, more=True)

    async def finish(self) -> None:
        """End the body cleanly (the client sees a complete response), once, after the head."""
        if self.started and not self.finished:
            self.finished = True
            await self._body(b"", more=False)

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        await self._message({"type": "http.response.start", "status": status, "headers": headers})
        self.started = True

    async def _body(self, data: bytes, *, more: bool) -> None:
        await self._message({"type": "http.response.body", "body": data, "more_body": more})
        self.last_write = time.monotonic()

    async def _message(self, message: Message) -> None:
        if self._lock is None:
            await self._timed(message)
        else:
            async with self._lock:
                await self._timed(message)

    async def _timed(self, message: Message) -> None:
        if self._timeout is None:
            await self._send(message)
            return
        try:
            with anyio.fail_after(self._timeout):
                await self._send(message)
        except TimeoutError:
            raise TimeoutError(
                f"a write to the client took over send_timeout={self._timeout}s; "
                "the stream was abandoned"
            ) from None


async def stream_events(
    receive: Receive,
    send: Send,
    events: AsyncIterable[Item] | Iterable[Item],
    *,
    status: int = 200,
    headers: Iterable[tuple[bytes, bytes]] = DEFAULT_HEADERS,
    ping: float | None = None,
    send_timeout: float | None = None,
) -> None:
    """Send the response head, then each item of ``events`` as it comes, then the end.

    In: the ASGI ``receive`` and ``send`` of an HTTP request; ``events``, an
    async or sync iterable of :data:`Item` (a sync one is iterated in a worker
    thread, except lists and tuples); ``headers``, the ASGI head's headers as
    they go out (:func:`response_headers` builds them from yours); ``ping`` and
    ``send_timeout`` in seconds. Returns when the producer is exhausted, the
    client disconnected, the server shuts down (:func:`end_streams`, a
    SIGTERM/SIGINT it catches) or cancelled the request; the producer is
    closed in every case (see the module docstring).

    Raises what the producer raises (the body is then left cut), what
    :func:`encode_item` raises, and :class:`TimeoutError` past ``send_timeout``.
    """
    source = _async_items(events)
    writer = _Writer(send, send_timeout, ping)
    failure: Exception | None = None
    stream = _Stream()
    signalled = _wrap_signal_handlers()  # True: shutting down already; end after the head
    _open.add(stream)
    try:
        with stream.scope:  # cancelled by the disconnect and by end_streams()
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_watch_disconnect, receive, stream.scope)
                try:
                    await writer.start(status, list(headers))
                    if not signalled:  # else shutting down already: the head, then the end
                        if ping is None and send_timeout is None:
                            await _send_each(source, send)
                        else:
                            if ping is not None:
                                tasks.start_soon(writer.ping, ping)
                            async for item in source:
                                await writer.write(item)
                    await writer.finish()
                except Exception as exc:
                    failure = exc  # raised as itself below, not in an exception group
                tasks.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if stream.ending:
            with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                await writer.finish()
    except anyio.get_cancelled_exc_class():
        # Not the disconnect nor end_streams() (that scope is ours and swallows
        # its own cancellation): the server cancelled the request, at shutdown.
        with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            await writer.finish()
    finally:
        _open.discard(stream)
        with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            await _close(source)


async def _send_each(source: AsyncIterator[Item], send: Send) -> None:
    """Each item in its own body message, nothing else: no ping, no send_timeout.

    The common case, kept to the item's encoding and one ``send``: through
    uvicorn an item costs a few µs of ours beside about ten of the server's.
    """
    async for item in source:
        await send({"type": "http.response.body", "body": encode_item(item), "more_body": True})


class _Stream:
    """An open stream as :func:`end_streams` reaches it: its event loop and its cancel scope."""

    __slots__ = ("_call_soon", "ending", "scope")

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.ending = False  # True: end the body cleanly once the scope is left
        self._call_soon = _call_soon_threadsafe()

    def end(self) -> None:
        """Ask the stream to end cleanly; safe from any thread and from a signal handler."""
        with contextlib.suppress(RuntimeError):  # its event loop is closed: nothing to end
            self._call_soon(self._end_now)

    def _end_now(self) -> None:
        self.ending = True
        self.scope.cancel()


#: Every stream open in this process, whatever its thread or event loop.
_open: set[_Stream] = set()


def end_streams() -> int:
    """End every event stream open in this process cleanly; return how many were open.

    Each stream's body is ended (the client sees a complete response, and an
    EventSource reconnects with Last-Event-ID) and its producer closed, as if
    the producer were exhausted; nothing is raised or logged. Safe from any
    thread and from a signal handler: the ending is scheduled on each
    stream's event loop and this returns at once. Streams that start later
    are not affected. Under a server that catches SIGTERM/SIGINT in Python
    (uvicorn), those signals call this already (see the module docstring).
    """
    streams = list(_open)  # one C call: safe against other threads adding and removing
    for stream in streams:
        stream.end()
    return len(streams)


def _call_soon_threadsafe() -> Callable[[Callable[[], object]], object]:
    """How to run a callback in this thread's event loop from a signal handler or thread."""
    try:
        return asyncio.get_running_loop().call_soon_threadsafe
    except RuntimeError:  # anyio's other backend: Trio, whose token is signal-safe too
        trio: Any = sys.modules["trio"]
        return trio.lowlevel.current_trio_token().run_sync_soon  # type: ignore[no-any-return]


class _EndStreamsFirst:
    """A signal handler: end every open stream, then call the handler it replaced."""

    def __init__(self, previous: Callable[[int, FrameType | None], Any]) -> None:
        self.previous = previous
        self.fired = False

    def __call__(self, signum: int, frame: FrameType | None) -> Any:
        self.fired = True
        end_streams()
        return self.previous(signum, frame)


def _wrap_signal_handlers() -> bool:
    """Wrap the Python SIGINT/SIGTERM handlers (main thread only); True if one fired already.

    SIG_DFL, SIG_IGN and Python's own SIGINT handler (KeyboardInterrupt) are
    left alone: nobody shuts down gracefully on those, so there is nothing to
    help along (and an interrupted notebook cell must not end later streams).
    """
    if threading.current_thread() is not threading.main_thread():
        return False  # signal.signal() works only there, and handlers run only there
    fired = False
    for signum in _SIGNALS:
        handler = signal.getsignal(signum)
        if isinstance(handler, _EndStreamsFirst):
            fired = fired or handler.fired
        elif callable(handler) and handler is not signal.default_int_handler:
            signal.signal(signum, _EndStreamsFirst(handler))
    return fired


async def _watch_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` when the client goes away (request body messages are skipped)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


def _async_items(events: AsyncIterable[Item] | Iterable[Item]) -> AsyncIterator[Item]:
    """``events`` as an async iterator (an async one as it is: no extra layer per item)."""
    if isinstance(events, AsyncIterable):
        return aiter(events)
    if isinstance(events, list | tuple):
        return _listed(events)
    return _Threaded(iter(events))


async def _listed(events: list[Item] | tuple[Item, ...]) -> AsyncIterator[Item]:
    for item in events:  # in memory: nothing can block
        yield item


_END: Final[Any] = object()

#: Threads that may step sync producers at once, per event loop (see producer_limiter()).
PRODUCER_THREADS: Final = 100
_producer_limiter: RunVar[anyio.CapacityLimiter] = RunVar("ssekit_producer_limiter")


def producer_limiter() -> anyio.CapacityLimiter:
    """The limiter of the threads that step sync producers in the running event loop.

    It is not anyio's default thread limiter, which runs the app's ``def``
    endpoints: producers that block never take those threads. A stream holds
    one token while it iterates a sync producer, and gives it back when it
    ends or lets go of a producer blocked in ``next()``; a stream finding none
    left waits for one after its response head (a disconnect still ends it).
    :data:`PRODUCER_THREADS` tokens; set ``total_tokens`` to change that.
    """
    try:
        return _producer_limiter.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(PRODUCER_THREADS)
        _producer_limiter.set(limiter)
        return limiter


class _Threaded:
    """A sync iterator's items, each ``next()`` run in a daemon thread of this stream's own.

    A thread cannot be stopped, but the stream need not wait for it: when the
    stream ends while a step is under way (a disconnect, shutdown), ``aclose()``
    returns at once and the thread runs ``close()`` on the iterator when that
    step returns (never another step). A daemon thread does not hold the
    process at exit, and it takes none of anyio's default worker threads.
    """

    def __init__(self, events: Iterator[Item]) -> None:
        self._events = events
        self._lock = threading.Lock()
        self._wake = threading.Semaphore(0)  # one release per step, and one to close
        self._thread: threading.Thread | None = None
        self._call_soon: Callable[[Callable[[], object]], object] | None = None
        self._stepped = anyio.Event()  # per step: the thread's answer is in
        self._closed = anyio.Event()
        self._item: Any = _END
        self._error: BaseException | None = None
        self._stepping = False  # a next() is running in the thread
        self._closing = False  # let go: close the iterator, no more steps
        self._token = False  # holding a token of producer_limiter()

    def __aiter__(self) -> _Threaded:
        return self

    async def __anext__(self) -> Item:
        if self._thread is None:
            await producer_limiter().acquire_on_behalf_of(self)
            self._token = True
            self._call_soon = _call_soon_threadsafe()
            self._thread = threading.Thread(target=self._run, name="ssekit-producer", daemon=True)
            self._thread.start()
        stepped = self._stepped = anyio.Event()
        with self._lock:
            self._stepping = True
        self._wake.release()
        await stepped.wait()  # when cancelled, aclose() lets go of the step
        if self._error is not None:
            raise self._error
        if self._item is _END:
            raise StopAsyncIteration
        return self._item  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        """Let go of the producer: close it in its thread, waiting for that only when no
        step is under way (a step under way closes it when it returns)."""
        if self._thread is None:  # never stepped: nothing runs
            _close_sync(self._events)
            return
        if self._closing:
            return
        if self._token:
            self._token = False
            producer_limiter().release_on_behalf_of(self)
        closed = self._closed = anyio.Event()
        with self._lock:
            self._closing = True
            busy = self._stepping
        if not busy:
            self._wake.release()
            await closed.wait()

    def _run(self) -> None:
        """The producer's thread: one ``next()`` per wake-up until let go, then ``close()``."""
        while True:
            self._wake.acquire()
            with self._lock:
                if self._closing:
                    break
            item: Any = _END
            error: BaseException | None = None
            try:
                item = next(self._events, _END)
            except BaseException as exc:  # raised in the stream, as the producer's error
                error = exc
            with self._lock:
                self._stepping = False
                if self._closing:  # let go meanwhile: nobody waits for this step
                    break
            self._item, self._error = item, error
            self._tell(self._stepped)
        _close_sync(self._events)
        self._tell(self._closed)

    def _tell(self, event: anyio.Event) -> None:
        """Set ``event`` in the stream's event loop (if it still runs: else nobody waits)."""
        assert self._call_soon is not None
        with contextlib.suppress(RuntimeError):
            self._call_soon(event.set)


def _close_sync(events: Iterator[Item]) -> None:
    close = getattr(events, "close", None)
    if close is not None:
        close()


async def _close(iterator: AsyncIterator[Item]) -> None:
    """``aclose()`` the iterator when it has one (an async generator's ``finally`` runs)."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


class EventStreamResponse:
    """An ASGI app answering one HTTP request with the event stream of ``events``.

    ``status``, ``headers``, ``ping`` and ``send_timeout`` are those of
    :func:`stream_events`. A HEAD request gets the head only, and the
    producer is closed without being started.
    """

    def __init__(
        self,
        events: AsyncIterable[Item] | Iterable[Item],
        *,
        status: int = 200,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        ping: float | None = None,
        send_timeout: float | None = None,
    ) -> None:
        if ping is not None and ping <= 0:
            raise ValueError(f"ping is an interval in seconds > 0, got {ping!r}")
        self.events = events
        self.status = status
        #: The head's headers, as they go out (a list: may be changed before the call).
        self.raw_headers = response_headers(headers)
        self.ping = ping
        self.send_timeout = send_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") == "HEAD":
            await _answer_head(send, self.status, self.raw_headers, self.events)
            return
        await stream_events(
            receive,
            send,
            self.events,
            status=self.status,
            headers=self.raw_headers,
            ping=self.ping,
            send_timeout=self.send_timeout,
        )


async def _answer_head(
    send: Send,
    status: int,
    headers: list[tuple[bytes, bytes]],
    events: AsyncIterable[Item] | Iterable[Item],
) -> None:
    """The head of the stream and an empty body; the producer is closed unstarted."""
    try:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        closer = getattr(events, "aclose", None) or getattr(events, "close", None)
        if closer is not None:
            result = closer()
            if isinstance(result, Awaitable):
                await result
