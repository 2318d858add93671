"""The built-in OpenAI-compatible mock upstream, for demos, tests and offline work.

    POST /v1/chat/completions   {"stream": true} -> text/event-stream of chat.completion.chunk
                                events (English and Chinese), then data: [DONE];
                                otherwise one JSON chat.completion
    POST /v1/responses          the Responses API, streamed or not (see _mock_apis)
    POST /v1/messages           Anthropic Messages, streamed or not (see _mock_apis)
    GET  /v1/models             the one mock model
    GET  /v1/events             numbered events with id: fields, resuming after Last-Event-ID;
                                ?count=N (default 10), ?cut_after=K cuts the connection
                                abruptly after K events, ?retry=MS (default 500)
    GET  /demo                  a page with an EventSource and a fetch() stream reader
    anything else               an error in OpenAI's shape (404, 405, 400)

Request JSON may set "max_tokens" (or "max_output_tokens") to cap the answer's token
count, and "model" (answered as given). Every answer reports exact usage
(:func:`mock_usage`); a streamed chat does when it sets
``"stream_options": {"include_usage": true}``, as OpenAI does: each chunk then has
``"usage": null`` and a last chunk with no choices carries it. ``?cut_after=K`` on a
POST cuts a streamed answer after K tokens. Events are written through
:class:`ssekit.EventWriter`, one HTTP chunk each, at once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.abc

from .._event import Event
from .._http import (
    BadRequest,
    ClientGone,
    Downstream,
    RequestHead,
    WireError,
    check_engine,
    close_now,
    error_body,
)
from .._writer import EventWriter
from ..openai import DONE
from ._mock_apis import chat_usage, mock_usage, serve_messages, serve_responses

__all__ = ("TOKENS", "MockConfig", "mock_text", "serve_mock")

#: The answer's tokens, cycled: English and Chinese, so multi-byte text is exercised.
TOKENS: Final = (
    "Hello", "!", " I", " am", " the", " ssekit", " mock", ".", " 你好", "，", "世界", "！",
    " Streaming", " works", " 很", "好", "。", " 😀",
)  # fmt: skip
MAX_BODY: Final = 1 << 20
EVENT_STREAM_HEADERS: Final = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
]

#: GET /demo: an EventSource on /v1/events and a fetch() reader of a streamed chat
#: completion, both appending what arrives (and recording when, for tests).
DEMO_PAGE: Final = r"""<!doctype html>
<html><head><meta charset="utf-8"><title>ssekit demo</title>
<style>body{font:15px system-ui;margin:2em} pre,ul{background:#f4f4f4;padding:.8em}</style>
</head><body>
<h1>ssekit: live through the proxy</h1>
<h2>EventSource <small id="es-state">connecting</small></h2><ul id="es"></ul>
<h2>fetch() stream <small id="fetch-state">waiting</small></h2><pre id="answer"></pre>
<script>
const q = new URLSearchParams(location.search);
const count = Number(q.get("count") || 6);
window.esEvents = []; window.chunks = []; window.fetchDone = false;
const es = new EventSource(`/v1/events?count=${count}&cut_after=${q.get("cut_after") || 3}&retry=100`);
es.onmessage = (e) => {
  window.esEvents.push({id: e.lastEventId, data: e.data, t: performance.now()});
  const li = document.createElement("li"); li.textContent = `${e.lastEventId}: ${e.data}`;
  document.getElementById("es").append(li);
  if (Number(e.lastEventId) >= count) { es.close(); document.getElementById("es-state").textContent = "done"; }
};
es.onerror = () => { document.getElementById("es-state").textContent = "reconnecting"; };
(async () => {
  const response = await fetch("/v1/chat/completions", {method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({model: "ssekit-mock", stream: true, messages: [{role: "user", content: "hi"}]})});
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  document.getElementById("fetch-state").textContent = "streaming";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (data === "[DONE]") { window.fetchDone = true; document.getElementById("fetch-state").textContent = "done"; return; }
      const delta = JSON.parse(data).choices[0].delta.content || "";
      window.chunks.push({text: delta, t: performance.now()});
      document.getElementById("answer").textContent += delta;
    }
  }
})();
</script></body></html>
"""


def mock_text(tokens: int) -> str:
    """The text a streamed or plain answer of ``tokens`` tokens carries."""
    return "".join(TOKENS[i % len(TOKENS)] for i in range(tokens))


@dataclass(frozen=True, slots=True, kw_only=True)
class MockConfig:
    """Where the mock listens, the shape of its answers, and the HTTP/1.1 engine serving
    them (``ssekit``'s own or ``h11``, as the proxy's ``--http``)."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 9000
    tokens: int = 40
    delay: float = 0.05
    model: str = "ssekit-mock"
    http: Literal["ssekit", "h11"] = "ssekit"


class _ChunkSink:
    """Adapts a response body to the EventWriter's byte sink: one chunk per send."""

    def __init__(self, client: Downstream) -> None:
        self._client = client

    async def send(self, item: bytes, /) -> None:
        await self._client.send_data(item)

    async def aclose(self) -> None:
        await self._client.send_end()


def _error(status: int, message: str) -> bytes:
    return error_body(status, message)


async def serve_mock(
    config: MockConfig,
    *,
    task_status: anyio.abc.TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the mock until cancelled; reports the bound ``(host, port)``. Raises
    :class:`ConfigError` for an unknown HTTP engine."""
    check_engine(config.http)
    listener = await anyio.create_tcp_listener(
        local_host=config.listen_host, local_port=config.listen_port
    )
    address = listener.extra(anyio.abc.SocketAttribute.local_address)
    async with listener, anyio.create_task_group() as tg:
        task_status.started((str(address[0]), int(address[1])))
        await listener.serve(lambda stream: _connection(stream, config), tg)


async def _connection(stream: anyio.abc.SocketStream, config: MockConfig) -> None:
    client = Downstream(stream, 64 * 1024, engine=config.http)
    try:
        while True:
            event = await client.next_event()
            if not isinstance(event, RequestHead):
                return
            body = b""
            async for part in client.body():
                body += part
                if len(body) > MAX_BODY:
                    await client.answer(413, _error(413, "request body too large"), close=True)
                    return
            if not await _route(client, event, body, config):
                return
            if not client.conn.reusable:
                return
            client.conn.start_next_cycle()
    except (ClientGone, BadRequest, WireError):
        return  # gone, or a request (or our answer) HTTP/1.1 cannot carry: closed below
    finally:
        await close_now(stream)


async def _route(client: Downstream, request: RequestHead, body: bytes, config: MockConfig) -> bool:
    """Answer one request; False when the connection must close."""
    method = request.method.decode()
    url = urlsplit(request.target.decode("ascii", "replace"))
    routes = {
        "/v1/chat/completions": "POST",
        "/v1/responses": "POST",
        "/v1/messages": "POST",
        "/v1/models": "GET",
        "/v1/events": "GET",
        "/demo": "GET",
    }
    if url.path not in routes:
        await client.answer(404, _error(404, f"unknown path {url.path}"))
        return True
    if method != routes[url.path]:
        await client.answer(405, _error(405, f"{url.path} takes {routes[url.path]}"))
        return True
    if url.path == "/demo":
        await client.answer(200, DEMO_PAGE.encode(), b"text/html; charset=utf-8")
        return True
    if url.path == "/v1/models":
        models = {"object": "list", "data": [{"id": config.model, "object": "model"}]}
        await client.answer(200, json.dumps(models).encode())
        return True
    if url.path == "/v1/events":
        return await _numbered_events(client, request, parse_qs(url.query), config)
    query = parse_qs(url.query)
    try:
        params = json.loads(body)
        needs = "input" if url.path == "/v1/responses" else "messages"
        if not isinstance(params, dict) or needs not in params:
            raise ValueError(f"expected a JSON object with {needs}")
        if needs == "messages" and not isinstance(params["messages"], list):
            raise ValueError("messages must be a list")
        max_tokens = params.get("max_tokens", params.get("max_output_tokens"))
        tokens = config.tokens if max_tokens is None else min(int(max_tokens), config.tokens)
        cut_after = int(query["cut_after"][0]) if "cut_after" in query else None
    except (ValueError, TypeError) as exc:
        await client.answer(400, _error(400, f"invalid request body: {exc}"))
        return True
    asked = params.get("model")
    model = asked if isinstance(asked, str) else config.model
    if url.path != "/v1/chat/completions":

        async def open_stream() -> EventWriter:
            await client.send_response(200, EVENT_STREAM_HEADERS)
            return EventWriter(_ChunkSink(client))

        async def answer(status: int, data: bytes) -> None:
            await client.answer(status, data)

        serve = serve_responses if url.path == "/v1/responses" else serve_messages
        return await serve(
            open_stream,
            answer,
            params,
            model=model,
            tokens=tokens,
            token=lambda i: TOKENS[i % len(TOKENS)],
            delay=config.delay,
            cut_after=cut_after,
        )
    created = int(time.time())
    base = {"id": "chatcmpl-ssekit", "created": created, "model": model}
    usage = mock_usage(params, tokens)
    if not params.get("stream"):
        completion = {
            **base,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": mock_text(tokens)},
                    "finish_reason": "stop",
                }
            ],
            "usage": chat_usage(usage),
        }
        await client.answer(200, json.dumps(completion, ensure_ascii=False).encode())
        return True

    options = params.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    extra: dict[str, object] = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, str], finish: str | None = None) -> Event:
        obj = {
            **base,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return Event(data=json.dumps(obj, ensure_ascii=False))

    await client.send_response(200, EVENT_STREAM_HEADERS)
    writer = EventWriter(_ChunkSink(client))
    await writer.send(chunk({"role": "assistant", "content": ""}))
    for i in range(tokens):
        if cut_after is not None and i >= cut_after:
            return False  # abrupt: no terminating chunk, the connection closes
        await anyio.sleep(config.delay)
        await writer.send(chunk({"content": TOKENS[i % len(TOKENS)]}))
    await writer.send(chunk({}, "stop"))
    if include_usage:
        last: dict[str, object] = {
            **base,
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": chat_usage(usage),
        }
        await writer.send(Event(data=json.dumps(last)))
    await writer.send(Event(data=DONE))
    await writer.aclose()
    return True


async def _numbered_events(
    client: Downstream, request: RequestHead, query: dict[str, list[str]], config: MockConfig
) -> bool:
    last = dict(request.headers).get(b"last-event-id", b"0").decode("ascii", "replace")
    try:
        start = int(last) + 1 if last else 1
        count = int(query.get("count", ["10"])[0])
        cut_after = int(query["cut_after"][0]) if "cut_after" in query else None
        retry = int(query.get("retry", ["500"])[0])
    except ValueError:
        await client.answer(
            400, _error(400, "count, cut_after, retry and Last-Event-ID are integers")
        )
        return True
    await client.send_response(200, EVENT_STREAM_HEADERS)
    writer = EventWriter(_ChunkSink(client))
    await writer.send(Event(data="hello", event="open", retry=retry, id=str(start - 1)))
    for n, number in enumerate(range(start, count + 1)):
        await anyio.sleep(config.delay)  # a cut comes when the next event would have
        if cut_after is not None and n >= cut_after:
            return False  # abrupt: no terminating chunk, the connection closes
        await writer.send(Event(data=f"event {number} 你好", id=str(number)))
    await writer.aclose()
    return True
