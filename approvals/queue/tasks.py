from __future__ import annotations

from celery import shared_task

from approvals.queue.escalations import TIMER_TASK
from approvals.queue.timers import escalation_timer_fired


@shared_task(name=TIMER_TASK)
def escalation_timer_task(action_id: str, timer_id: str) -> None:
    # Safe to run late, early or twice: only the timer the action still names acts.
    escalation_timer_fired(action_id=action_id, timer_id=timer_id)
