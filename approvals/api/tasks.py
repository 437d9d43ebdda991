from __future__ import annotations

from celery import shared_task

from approvals.api.idempotency import idempotency_purge


@shared_task(name="approvals.tasks.idempotency_purge_task")  # named in the beat schedule
def idempotency_purge_task() -> None:
    idempotency_purge()
