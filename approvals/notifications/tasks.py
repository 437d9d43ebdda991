from __future__ import annotations

from celery import shared_task
from celery.app.task import Task

from approvals.notifications.webhooks import DELIVER_TASK, webhook_deliver


@shared_task(name=DELIVER_TASK, bind=True, max_retries=None)
def webhook_deliver_task(self: Task, delivery_id: int) -> None:
    # Safe to run twice: a delivery is claimed with a conditional UPDATE and sent at most once
    # per claim; the send holds no transaction open.
    if not webhook_deliver(delivery_id=delivery_id):
        attempt = self.request.retries
        raise self.retry(countdown=min(2**attempt * 5, 300))
