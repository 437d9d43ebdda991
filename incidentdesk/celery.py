from __future__ import annotations

import logging
import os
from functools import partial
from typing import Any

from celery import Celery
from celery.contrib.django.task import DjangoTask
from django.db import transaction
from kombu.exceptions import OperationalError

from incidentdesk.outage import REDIS_DOWN, redis_outage

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "incidentdesk.settings")

logger = logging.getLogger(__name__)


def _guarded_send(name: str, send: Any) -> Any:
    """Sending a task costs a request at most one broker timeout while Redis is out
    (incidentdesk/outage.py): after one send fails, the next ones fail at once until Redis
    answers again."""
    if not redis_outage.usable():
        raise OperationalError("Redis is out")
    try:
        sent = send()
    except REDIS_DOWN as exc:
        redis_outage.failed(f"sending {name}", exc)
        raise
    redis_outage.worked()
    return sent


def _send_after_commit(name: str, send: Any, args: Any) -> None:
    # Tasks queued after commit never fail the change that committed: the task is logged as
    # not queued instead. The periodic sweep does the work of the lost ones it covers: kill
    # switch effects, escalation timers, webhook deliveries and stalled rollbacks.
    try:
        _guarded_send(name, send)
    except REDIS_DOWN as exc:
        logger.warning("%s%r not queued: %s", name, tuple(args or ()), exc)


class Task(DjangoTask):
    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        return _guarded_send(self.name, partial(super().apply_async, args, kwargs, **options))

    def delay_on_commit(self, *args: Any, **kwargs: Any) -> None:
        self.apply_async_on_commit(args, kwargs)

    def apply_async_on_commit(self, args: Any = None, kwargs: Any = None, **options: Any) -> None:
        send = partial(super().apply_async, args, kwargs, **options)
        transaction.on_commit(partial(_send_after_commit, self.name, send, args))


app = Celery("incidentdesk", task_cls=Task)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _add_worker_heartbeat() -> None:
    from incidentdesk.health import WorkerHeartbeat

    app.steps["worker"].add(WorkerHeartbeat)


_add_worker_heartbeat()


def enqueue_on_commit(name: str, *args: Any, **options: Any) -> None:
    """Queue the task registered as `name` once the transaction commits. Services queue their
    work by name, so they need not import the task modules, which import them."""
    send = partial(app.send_task, name, args, **options)
    transaction.on_commit(partial(_send_after_commit, name, send, args))
