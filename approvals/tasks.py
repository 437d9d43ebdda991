from __future__ import annotations

from celery import shared_task

from approvals.audit import verification_run


@shared_task
def audit_verify_task(verification_id: int) -> None:
    # Safe to run twice: the run claims its row, and a second delivery finds it taken.
    verification_run(verification_id=verification_id)
