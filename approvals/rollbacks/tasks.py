from __future__ import annotations

from celery import shared_task

from approvals.rollbacks.control import RUN_TASK
from approvals.rollbacks.runner import rollback_run


@shared_task(name=RUN_TASK, acks_late=True, reject_on_worker_lost=True)
def rollback_run_task(plan_id: str) -> None:
    # Safe to run twice, at once too: steps are claimed under the plan's lock, and every write
    # to a target carries the step's idempotency key. A run stops after a time budget (well
    # inside the broker's visibility timeout) and queues the next.
    if rollback_run(plan_id=plan_id):
        rollback_run_task.delay(plan_id)
