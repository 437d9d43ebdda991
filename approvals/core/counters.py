"""Counters in the cache that every web process shares (Redis in production), each use one
round trip. Errors of an unreachable Redis reach the caller, which knows what to do without it.
"""

from __future__ import annotations

import threading
from typing import Any

from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache

_clients = threading.local()


def _redis(backend: RedisCache) -> Any:
    """The Redis client behind this thread's cache, kept: building one costs more than a call."""
    kept = getattr(_clients, "kept", None)
    if kept is None or kept[0] is not backend:
        kept = _clients.kept = (backend, backend._cache.get_client(write=True))
    return kept[1]


def counters_shared() -> bool:
    """Whether the cache, and so these counters, are shared by every process (Redis), not kept
    in each process."""
    return isinstance(caches["default"], RedisCache)


def _text(value: Any) -> str:
    return "0" if value is None else str(int(value))


def counter_add(key: str, *, expire: int | None = None, read: str = "") -> tuple[int, str]:
    """Add one to `key` (which expires `expire` seconds after its first count), and read the
    counter `read` as it is now ("0" if it was never counted): one round trip with Redis."""
    backend = caches["default"]
    if isinstance(backend, RedisCache):
        full = backend.make_and_validate_key(key)
        pipe = _redis(backend).pipeline(transaction=False)
        pipe.incr(full)
        if expire is not None:
            pipe.expire(full, expire, nx=True)
        if read:
            pipe.get(backend.make_and_validate_key(read))
        answers = pipe.execute()
        return int(answers[0]), _text(answers[-1]) if read else ""
    try:
        used = backend.incr(key)
    except ValueError:  # its first count
        used = 1 if backend.add(key, 1, timeout=expire) else backend.incr(key)
    return used, _text(backend.get(read)) if read else ""


def counter_read(key: str) -> str:
    """The counter `key` as it is now ("0" if it was never counted)."""
    backend = caches["default"]
    if isinstance(backend, RedisCache):
        return _text(_redis(backend).get(backend.make_and_validate_key(key)))
    return _text(backend.get(key))


def counter_bump(key: str) -> None:
    """Add one to a counter that never expires."""
    backend = caches["default"]
    if isinstance(backend, RedisCache):
        _redis(backend).incr(backend.make_and_validate_key(key))
        return
    try:
        backend.incr(key)
    except ValueError:
        if not backend.add(key, 1, timeout=None):
            backend.incr(key)
