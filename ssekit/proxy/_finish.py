"""``--on-client-disconnect finish``: the client a metered exchange forwards to, which may
leave while the upstream is read on to its end.

When the client goes away (a failed write, or the watcher's read at EOF) the
exchange is not cut at once: writes are dropped, the watcher's read holds for
``--finish-timeout``, and the upstream is read to its end meanwhile, so the
provider's final usage reaches the tap. Past the timeout the read reports the
departure and the exchange ends as a disconnect, closing the upstream. What the
client got is kept as ``events_delivered``.
"""

from __future__ import annotations

import anyio

from .._http import ClientGone, Downstream
from ._stats import StreamStats

__all__ = ("Finishing",)


class Finishing(Downstream):
    """The original client; once it left, a sink that keeps the exchange going."""

    __slots__ = ("gone", "stats", "timeout")

    def __init__(self, client: Downstream, stats: StreamStats, timeout: float) -> None:
        # Share the real connection's socket and HTTP state; only two methods differ.
        self.stream = client.stream
        self.conn = client.conn
        self.addr = client.addr
        self.last_write = client.last_write
        self.send_timeout = client.send_timeout
        self.max_body_size = client.max_body_size
        self._body_size = 0
        self.stalled = False
        self.stats = stats
        self.timeout = timeout
        self.gone = False

    def _left(self) -> None:
        if not self.gone:
            self.gone = True
            self.stats.events_delivered = self.stats.events

    async def send_raw(self, data: bytes) -> None:
        if self.gone:
            return
        try:
            await super().send_raw(data)
        except ClientGone:
            self._left()

    async def receive(self, limit: float | None = None) -> bytes:
        if self.gone:
            data = b""
        else:
            try:
                data = await super().receive(limit)
            except ClientGone:
                data = b""
        if not data:
            self._left()
            await anyio.sleep(self.timeout)  # the upstream is read on meanwhile
        return data
