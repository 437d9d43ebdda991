"""Whether Redis failed a moment ago, per process, so that a Redis that is down or hangs costs
requests a socket timeout now and then rather than on every call.

The cache (rate limit counts), the broker and the channel layer are one Redis. When a call to
it fails, the work that can do without it (the rate limit counts in the process, live updates
and tasks sent after commit are skipped: pages and agents resync on reconnect, the periodic
sweep does what the tasks would have done) skips it for RETRY_SECONDS; then one caller at a
time tries it again. The log says when an outage starts and when it ends, once each.
"""

from __future__ import annotations

import logging
import threading
import time

from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

RETRY_SECONDS = 5.0
# What a Redis client raises when the server is down or hangs (kombu wraps the broker's).
REDIS_DOWN = (RedisError, OperationalError)


class Outage:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.since: float | None = None
        self.retry_at = 0.0

    @property
    def down(self) -> bool:
        return self.since is not None

    def usable(self) -> bool:
        """Whether to call Redis now: yes unless it failed within RETRY_SECONDS; after that,
        yes for one caller at a time until one of them reports how it went."""
        if self.since is None:
            return True
        with self.lock:
            now = time.monotonic()
            if self.since is None:
                return True
            if now < self.retry_at:
                return False
            self.retry_at = now + RETRY_SECONDS
            return True

    def failed(self, what: str, exc: BaseException) -> None:
        with self.lock:
            now = time.monotonic()
            self.retry_at = now + RETRY_SECONDS
            if self.since is not None:
                return
            self.since = now
        logger.warning(
            "Redis is unreachable (%s failed: %s): until it answers, the rate limit counts in "
            "each process, and live updates and tasks sent after commit are skipped",
            what,
            exc,
        )

    def worked(self) -> None:
        if self.since is None:
            return
        with self.lock:
            if self.since is None:
                return
            lasted, self.since = time.monotonic() - self.since, None
        logger.warning("Redis answers again after %.0f s of outage", lasted)


redis_outage = Outage()
