from __future__ import annotations

from celery import shared_task

from approvals.audit.record import audit_seal
from approvals.audit.verify import VERIFY_TASK, verification_run


@shared_task(name=VERIFY_TASK, acks_late=True, reject_on_worker_lost=True)
def audit_verify_task(verification_id: int) -> None:
    # Safe to run twice: the run claims its row, and a second delivery finds it taken (or,
    # if its worker died long ago, takes it over).
    verification_run(verification_id=verification_id)


@shared_task(name="approvals.tasks.audit_seal_task")  # named in the beat schedule
def audit_seal_task() -> None:
    # A backstop: writers seal their own events after commit; this catches any left by a
    # process that died between its commit and its seal.
    audit_seal(wait=True)
