"""Is the desk ready to work: its database, Redis, a Celery worker and Celery beat.

Workers record a heartbeat every HEARTBEAT_SECONDS from a timer of their own (a bootstep), so
a worker that is alive but idle still counts. Beat sends a heartbeat task at the same pace; a
worker that runs it records beat's heartbeat (so with no worker, beat's goes stale too). Both
live in the cache (Redis in production), keyed by the Celery queue, which separates desks that
share a Redis.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from celery import bootsteps
from django.conf import settings
from django.core.cache import cache
from django.db import connection

from incidentdesk.outage import REDIS_DOWN, redis_outage

HEARTBEAT_TASK = "approvals.tasks.heartbeat_task"


def _key(kind: str) -> str:
    return f"incidentdesk:heartbeat:{settings.CELERY_TASK_DEFAULT_QUEUE}:{kind}"


def heartbeat_record(kind: str) -> None:
    """`kind` ("worker" or "beat") is alive now. Never raises: while Redis is out the heartbeat
    is not recorded (and /readyz says so), but the worker that beats must not stop for it."""
    if not redis_outage.usable():
        return
    try:
        cache.set(_key(kind), time.time(), timeout=max(3600, 10 * settings.READY_HEARTBEAT_SECONDS))
    except REDIS_DOWN as exc:
        redis_outage.failed(f"the {kind} heartbeat", exc)
    else:
        redis_outage.worked()


class WorkerHeartbeat(bootsteps.StartStopStep):
    """A worker's heartbeat, from the worker's own timer: it beats while the worker runs,
    busy or idle."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.tref: Any = None

    def start(self, worker: Any) -> None:
        heartbeat_record("worker")
        self.tref = worker.timer.call_repeatedly(
            settings.HEARTBEAT_SECONDS, heartbeat_record, ("worker",), priority=10
        )

    def stop(self, worker: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _heartbeat(kind: str, now: float) -> Check:
    try:
        at = cache.get(_key(kind))
    except Exception as exc:
        return Check(kind, False, f"its heartbeat could not be read: {exc}")
    limit = settings.READY_HEARTBEAT_SECONDS
    if at is None:
        return Check(kind, False, "no heartbeat recorded")
    age = now - float(at)
    if age > limit:
        return Check(kind, False, f"last heartbeat {age:.0f} s ago (more than {limit} s)")
    return Check(kind, True, f"last heartbeat {age:.0f} s ago")


def readiness() -> list[Check]:
    """Each part the desk needs, and how it is."""
    checks = []
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks.append(Check("database", True, "answers"))
    except Exception as exc:
        checks.append(Check("database", False, f"does not answer: {exc}"))
    if settings.REDIS_URL:
        import redis

        try:
            client = redis.Redis.from_url(
                settings.REDIS_URL,
                socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
                socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT,
            )
            client.ping()
            client.close()
            checks.append(Check("redis", True, "answers"))
        except Exception as exc:
            checks.append(Check("redis", False, f"does not answer: {exc}"))
    now = time.time()
    checks.append(_heartbeat("worker", now))
    checks.append(_heartbeat("beat", now))
    return checks
