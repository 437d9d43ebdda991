"""The Celery broker transport: kombu's Redis transport, made to survive losing Redis.

When a worker's broker connection drops, Celery closes the dead connection, and kombu's Redis
channel then tries to put the messages the worker holds (tasks waiting for their ETA, late-acked
tasks running) back on the queue. By then the connection has let go of its settings, and that
attempt fails with an AttributeError that Celery does not expect (kombu 5.7.0): the worker
exits ("Unrecoverable error") instead of reconnecting. Here the attempt fails as a connection
error, which Celery ignores and reconnects; the messages stay in Redis's set of unacknowledged
ones, which kombu hands out again after the visibility timeout.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection is closed")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel
