from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from approvals import live
from approvals.audit import Actor, audit_action_event
from approvals.models import Action, KillSwitch
from approvals.notifications import notify
from approvals.queue.escalations import schedule_timer, tiers_from, tiers_of

S = Action.Status


def escalation_resume(action: Action, *, extra: timedelta) -> None:
    """A frozen escalation thaws: its SLA and expiry move on by the time it was frozen, and it
    gets a new timer (the old one, if still queued, is stale)."""
    if action.sla_due_at is not None:
        action.sla_due_at += extra
    if action.expires_at is not None:
        action.expires_at += extra
    action.timer_id = uuid.uuid4().hex
    action.save(update_fields=["sla_due_at", "expires_at", "timer_id", "updated_at"])
    schedule_timer(action)
    live.escalation_changed(action.pk, agent_id=action.agent_id)


def escalation_timer_fired(*, action_id: Any, timer_id: str, now: datetime | None = None) -> str:
    """A tier's SLA timer went off: move the item up a tier, or expire it past the last.

    Returns what it did: "stale" (decided, moved on, or another timer's), "early" (rescheduled
    for its due time), "escalated" or "expired".
    """
    now = now or timezone.now()
    with transaction.atomic():
        action = (
            Action.objects.select_for_update(of=("self",))
            .select_related("domain", "agent")
            .filter(pk=action_id, status=S.ESCALATED, timer_id=timer_id)
            .first()
        )
        if action is None or not timer_id:
            return "stale"
        if action.sla_due_at and now < action.sla_due_at:
            schedule_timer(action)
            return "early"
        if KillSwitch.objects.engaged_over(action.domain.slug) is not None:
            return "frozen"  # the sweep takes it up again once the switch is released
        tiers = tiers_of(action.domain_id)
        higher = [t for t in tiers if t.level > (action.tier or 0)]
        system = Actor.system("escalation-timer")
        if not higher:
            action.settle(
                S.EXPIRED,
                by=system.name,
                at=now,
                reason=f"no decision within the SLA of every tier up to {action.tier}",
            )
            audit_action_event(
                actor=system,
                action=action,
                event="action.expired",
                summary=f"{action.tool}:{action.verb} expired undecided at tier {action.tier}; "
                "the agent is told it is denied",
                data={"tier": action.tier},
            )
            live.escalation_changed(action.pk, agent_id=action.agent_id)
            notify(action=action, event="escalation.expired")
            return "expired"
        before, nxt = action.tier, higher[0]
        action.tier = nxt.level
        action.sla_due_at = now + timedelta(seconds=nxt.sla_seconds)
        remaining = sum(t.sla_seconds for t in tiers_from(tiers, nxt.level))
        action.expires_at = now + timedelta(seconds=remaining)
        action.timer_id = uuid.uuid4().hex
        action.save(update_fields=["tier", "sla_due_at", "expires_at", "timer_id", "updated_at"])
        audit_action_event(
            actor=system,
            action=action,
            event="escalation.tier_raised",
            summary=f"SLA of tier {before} passed: moved to {nxt.describe()}",
            data={"from": before, "to": nxt.level},
        )
        schedule_timer(action)
        live.escalation_changed(action.pk, agent_id=action.agent_id)
        notify(action=action, event="escalation.sla_breached")
        return "escalated"


def escalations_sweep(*, now: datetime | None = None) -> int:
    """Fire every timer that is overdue: the backstop for timer tasks that were lost."""
    now = now or timezone.now()
    killed = KillSwitch.objects.killed_domain_ids()
    if killed is None:
        return 0  # the global switch: everything is frozen
    overdue = (
        Action.objects.filter(status=S.ESCALATED, sla_due_at__lte=now)
        .exclude(domain_id__in=killed)
        .values_list("pk", "timer_id")
    )
    fired = 0
    for action_id, timer_id in overdue[:500]:
        if escalation_timer_fired(action_id=action_id, timer_id=timer_id, now=now) in (
            "escalated",
            "expired",
        ):
            fired += 1
    return fired
