"""Counting agent API requests for the rate limit, through a Redis outage.

The counts live in the cache (Redis in production), shared by every web process. While Redis
cannot be reached (incidentdesk/outage.py), each process counts on its own, so a token may make
up to the limit in each process until Redis is back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache

from incidentdesk.outage import REDIS_DOWN, redis_outage

KEEP_SECONDS = 120.0  # a local count outlives its one-minute window, then is dropped
SHARED_SECONDS = 90  # a count in the cache outlives its one-minute window, then expires

_clients = threading.local()


def _redis(backend: RedisCache) -> Any:
    """The Redis client behind this thread's cache, kept: building one costs more than a call."""
    kept = getattr(_clients, "kept", None)
    if kept is None or kept[0] is not backend:
        kept = _clients.kept = (backend, backend._cache.get_client(write=True))
    return kept[1]


def count_in_cache(key: str) -> int:
    """Count one request under `key` in the cache, shared by every process: with Redis, one
    round trip (INCR, and the expiry set by the first)."""
    backend = caches["default"]
    if isinstance(backend, RedisCache):
        full = backend.make_and_validate_key(key)
        pipe = _redis(backend).pipeline(transaction=False)
        pipe.incr(full)
        pipe.expire(full, SHARED_SECONDS, nx=True)
        used, _ = pipe.execute()
        return int(used)
    try:
        return backend.incr(key)
    except ValueError:  # the first request of this window
        return 1 if backend.add(key, 1, timeout=SHARED_SECONDS) else backend.incr(key)


class Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.local: dict[str, tuple[int, float]] = {}  # key -> (count, monotonic expiry)

    def count(self, key: str, shared: Callable[[], int]) -> int:
        """This request's number under `key` in its window: `shared()` counts it in the
        cache; while Redis is out, this process counts."""
        if redis_outage.usable():
            try:
                used = shared()
            except REDIS_DOWN as exc:
                redis_outage.failed("the rate limit", exc)
            else:
                if redis_outage.down:
                    redis_outage.worked()
                    with self.lock:
                        self.local.clear()
                return used
        return self._count_here(key)

    def _count_here(self, key: str) -> int:
        now = time.monotonic()
        with self.lock:
            if key not in self.local:
                self.local = {k: v for k, v in self.local.items() if v[1] > now}
            used = self.local.get(key, (0, now + KEEP_SECONDS))[0] + 1
            self.local[key] = (used, now + KEEP_SECONDS)
        return used


requests = Counter()
