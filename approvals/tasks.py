"""Every capability's Celery tasks, found here by Celery's autodiscovery, and the periodic
sweep that backs up the tasks that were lost."""

from __future__ import annotations

from celery import shared_task

from approvals.api import tasks as api_tasks
from approvals.audit import tasks as audit_tasks
from approvals.killswitches import killswitch_effects, killswitch_effects_pending
from approvals.killswitches import tasks as killswitch_tasks
from approvals.notifications import stalled_deliveries
from approvals.notifications.tasks import webhook_deliver_task
from approvals.queue import escalations_sweep, executions_overdue_sweep
from approvals.queue import tasks as queue_tasks
from approvals.rollbacks import rollbacks_stalled
from approvals.rollbacks.tasks import rollback_run_task
from incidentdesk.health import HEARTBEAT_TASK, heartbeat_record

REGISTERED = (api_tasks, audit_tasks, killswitch_tasks, queue_tasks)


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


@shared_task
def executions_sweep_task() -> None:
    executions_overdue_sweep()


@shared_task(name=HEARTBEAT_TASK)
def heartbeat_task() -> None:
    # Sent by beat alone: a worker running it shows that beat is sending.
    heartbeat_record("beat")
