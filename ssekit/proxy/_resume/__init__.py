"""Resumable streams: pure records and replay rules, one store interface, two stores.

    _records.py   pure: ids, keys, positions, states, what a resume request gets
    _store.py     the interface both stores implement, and the owner's Writer
    _memory.py    streams in this process (same-instance resumption)
    _redis.py     streams in Redis, shared by instances (extra ``ssekit[redis]``)
    _hook.py      where an exchange records its stream and may outlive its client
    _endpoint.py  GET / DELETE {admin prefix}/streams/<id>

Nothing here is imported while the store is off, except this package's names.
"""

from __future__ import annotations

import secrets

from ..._errors import ConfigError
from .._config import ProxyConfig
from .._stats import Metrics
from ._hook import Recording, Resume
from ._memory import MemoryStore
from ._store import Store, StoreUnavailable, Writer

__all__ = (
    "MemoryStore",
    "Recording",
    "Resume",
    "Store",
    "StoreUnavailable",
    "Writer",
    "make_resume",
)


def make_resume(config: ProxyConfig, metrics: Metrics) -> Resume:
    """The resumption of one proxy process, with the store ``config.resume_store`` names.

    Raises :class:`ConfigError` when a Redis store is asked for and the ``redis``
    package is missing.
    """
    assert config.resume_store is not None
    owner = secrets.token_hex(8)  # this process, as the owner of the streams it forwards
    store: Store
    if config.resume_store == "memory":
        store = MemoryStore(
            ttl=config.resume_ttl,
            max_bytes=config.resume_max_bytes,
            limit=config.resume_memory_limit,
            owner=owner,
        )
    else:
        try:
            from ._redis import RedisStore
        except ImportError as exc:
            raise ConfigError(
                f"--resume-store {config.resume_store}: the redis package is missing "
                f"({exc}); pip install 'ssekit[redis]'"
            ) from exc
        store = RedisStore(
            config.resume_store,
            ttl=config.resume_ttl,
            max_bytes=config.resume_max_bytes,
            owner=owner,
            metrics=metrics,
            log_format=config.log_format,
        )
    return Resume(config, store, metrics)
