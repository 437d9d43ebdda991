from __future__ import annotations

from celery import shared_task

from approvals.killswitches.acks import links_purge
from approvals.killswitches.effects import killswitch_effects
from approvals.killswitches.switches import EFFECTS_TASK


@shared_task(name=EFFECTS_TASK, acks_late=True, reject_on_worker_lost=True)
def killswitch_effects_task(change_id: int) -> None:
    # Safe to run twice: the change is claimed under a row lock and marked done.
    killswitch_effects(change_id=change_id)


@shared_task(name="approvals.tasks.agent_links_purge_task")  # named in the beat schedule
def agent_links_purge_task() -> None:
    links_purge()
