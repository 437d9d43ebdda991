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


class Task(DjangoTask):
    """Sending a task costs a request at most one broker timeout while Redis is out
    (incidentdesk/outage.py): after one send fails, the next ones fail at once until Redis
    answers again. And tasks queued after commit never fail the change that committed: the
    task is logged as not queued instead. The periodic sweep does the work of the lost ones
    it covers: kill switch effects, escalation timers, webhook deliveries and stalled
    rollbacks."""

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        if not redis_outage.usable():
            raise OperationalError("Redis is out")
        try:
            sent = super().apply_async(args, kwargs, **options)
        except REDIS_DOWN as exc:
            redis_outage.failed(f"sending {self.name}", exc)
            raise
        redis_outage.worked()
        return sent

    def delay_on_commit(self, *args: Any, **kwargs: Any) -> None:
        transaction.on_commit(partial(self._send_after_commit, args, kwargs, {}))

    def apply_async_on_commit(self, args: Any = None, kwargs: Any = None, **options: Any) -> None:
        transaction.on_commit(partial(self._send_after_commit, args, kwargs, options))

    def _send_after_commit(self, args: Any, kwargs: Any, options: dict[str, Any]) -> None:
        try:
            self.apply_async(args, kwargs, **options)
        except REDIS_DOWN as exc:
            logger.warning("%s%r not queued: %s", self.name, tuple(args or ()), exc)


app = Celery("incidentdesk", task_cls=Task)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
