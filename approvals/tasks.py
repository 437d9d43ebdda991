from __future__ import annotations

from celery import shared_task
from celery.app.task import Task

from approvals.audit import audit_seal, verification_run
from approvals.escalations import escalation_timer_fired, escalations_sweep
from approvals.idempotency import idempotency_purge
from approvals.notifications import stalled_deliveries, webhook_deliver
from approvals.rollbacks import rollback_run, rollbacks_stalled
from approvals.stops import killswitch_effects, killswitch_effects_pending


@shared_task(acks_late=True, reject_on_worker_lost=True)
def audit_verify_task(verification_id: int) -> None:
    # Safe to run twice: the run claims its row, and a second delivery finds it taken (or,
    # if its worker died long ago, takes it over).
    verification_run(verification_id=verification_id)


@shared_task
def audit_seal_task() -> None:
    # A backstop: writers seal their own events after commit; this catches any left by a
    # process that died between its commit and its seal.
    audit_seal(wait=True)


@shared_task
def idempotency_purge_task() -> None:
    idempotency_purge()


@shared_task
def escalation_timer_task(action_id: str, timer_id: str) -> None:
    # Safe to run late, early or twice: only the timer the action still names acts.
    escalation_timer_fired(action_id=action_id, timer_id=timer_id)


@shared_task
def escalations_sweep_task() -> None:
    # Kill switch effects first: they freeze what the sweep would otherwise move.
    for change_id in killswitch_effects_pending():
        killswitch_effects(change_id=change_id)
    escalations_sweep()
    # The same backstop for webhook deliveries whose task was lost.
    for delivery_id in stalled_deliveries():
        webhook_deliver_task.delay(delivery_id)
    # And for rollbacks whose worker died mid-plan.
    for plan_id in rollbacks_stalled():
        rollback_run_task.delay(plan_id)


@shared_task(bind=True, max_retries=None)
def webhook_deliver_task(self: Task, delivery_id: int) -> None:
    # Safe to run twice: a delivery is claimed with a conditional UPDATE and sent at most once
    # per claim; the send holds no transaction open.
    if not webhook_deliver(delivery_id=delivery_id):
        attempt = self.request.retries
        raise self.retry(countdown=min(2**attempt * 5, 300))


@shared_task(acks_late=True, reject_on_worker_lost=True)
def killswitch_effects_task(change_id: int) -> None:
    # Safe to run twice: the change is claimed under a row lock and marked done.
    killswitch_effects(change_id=change_id)


@shared_task(acks_late=True, reject_on_worker_lost=True)
def rollback_run_task(plan_id: str) -> None:
    # Safe to run twice, at once too: steps are claimed under the plan's lock, and every write
    # to a target carries the step's idempotency key. A run stops after a time budget (well
    # inside the broker's visibility timeout) and queues the next.
    if rollback_run(plan_id=plan_id):
        rollback_run_task.delay(plan_id)
