"""Counting agent API requests for the rate limit, through a Redis outage.

The counts live in the cache (Redis in production), shared by every web process. While Redis
cannot be reached (incidentdesk/outage.py), each process counts on its own, so a token may make
up to the limit in each process until Redis is back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from approvals.agents import access_version
from approvals.core import counter_add
from incidentdesk.outage import REDIS_DOWN, redis_outage

KEEP_SECONDS = 120.0  # a local count outlives its one-minute window, then is dropped
SHARED_SECONDS = 90  # a count in the cache outlives its one-minute window, then expires


def count_in_cache(key: str, *, read: str = "") -> tuple[int, str]:
    """Count one request under `key` in the cache, shared by every process, and read the
    counter `read` in the same round trip."""
    return counter_add(key, expire=SHARED_SECONDS, read=read)


def shared_version() -> str | None:
    """The agents' access version (approvals.agents.access_version), or None while Redis is
    out or where the cache is not shared: then no kept token may be used."""
    if not redis_outage.usable():
        return None
    try:
        version = access_version()
    except REDIS_DOWN as exc:
        redis_outage.failed("reading the agents' access version", exc)
        return None
    requests.redis_answered()
    return version


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
                self.redis_answered()
                return used
        return self._count_here(key)

    def redis_answered(self) -> None:
        """Redis answered a call: an outage is over, and the counts go back to it."""
        if redis_outage.down:
            redis_outage.worked()
            with self.lock:
                self.local.clear()

    def _count_here(self, key: str) -> int:
        now = time.monotonic()
        with self.lock:
            if key not in self.local:
                self.local = {k: v for k, v in self.local.items() if v[1] > now}
            used = self.local.get(key, (0, now + KEEP_SECONDS))[0] + 1
            self.local[key] = (used, now + KEEP_SECONDS)
        return used


requests = Counter()
