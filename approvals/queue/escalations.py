"""Escalated actions: tiers, decisions by people, and the timers that move them up or expire them.

An escalation waits at a tier until enough people of that tier approve it, one rejects it, or
its SLA passes: then it moves up a tier, and past the last tier it expires (the agent is told it
is denied). Timers are Celery tasks carrying the action's current `timer_id`; a task whose id no
longer matches (the item was decided, or moved on) is stale and does nothing, so duplicated and
late tasks are harmless. A periodic sweep catches any timer that was lost.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from approvals import live
from approvals.audit import Actor, audit_action_event
from approvals.core import perm
from approvals.models import Action, KillSwitchChange, Tier
from approvals.notifications import notify
from approvals.rollbacks import undo_known
from incidentdesk.celery import enqueue_on_commit

# Task names stay as they were when every task lived in approvals/tasks.py: messages
# already queued (timers waiting for their time, retries) carry them.
TIMER_TASK = "approvals.tasks.escalation_timer_task"


S = Action.Status


@dataclass(frozen=True)
class TierSpec:
    level: int
    approvals_needed: int
    decide_permission: str
    senior_permission: str
    sla_seconds: int

    def describe(self) -> str:
        people = (
            "one approver"
            if self.approvals_needed == 1
            else (f"{self.approvals_needed} different approvers")
        )
        senior = f", one with {self.senior_permission}" if self.senior_permission else ""
        return f"tier {self.level}: {people}{senior} ({self.decide_permission})"


DEFAULT_TIERS = (
    TierSpec(1, 1, "decide_tier1", "", 15 * 60),
    TierSpec(2, 2, "decide_tier1", "decide_tier2", 30 * 60),
    TierSpec(3, 1, "decide_tier3", "", 60 * 60),
)


def tiers_of(domain_id: int) -> tuple[TierSpec, ...]:
    rows = Tier.objects.filter(domain_id=domain_id).order_by("level")
    configured = tuple(
        TierSpec(
            t.level, t.approvals_needed, t.decide_permission, t.senior_permission, t.sla_seconds
        )
        for t in rows
    )
    return configured or DEFAULT_TIERS


def tier_at(tiers: tuple[TierSpec, ...], level: int) -> TierSpec:
    # A policy may name a tier the domain does not have: the nearest one takes it.
    return min(tiers, key=lambda t: (abs(t.level - level), -t.level))


def tiers_from(tiers: tuple[TierSpec, ...], level: int) -> tuple[TierSpec, ...]:
    return tuple(t for t in tiers if t.level >= level)


def escalation_raise_without_undo(action: Action) -> None:
    """An escalated action the desk knows no undo for waits one tier higher than the policy
    says, where its domain asks for that (Domain.raise_tier_without_undo) and a higher tier
    exists; its reason says so."""
    if not action.domain.raise_tier_without_undo or undo_known(action):
        return
    tiers = tiers_of(action.domain_id)
    level = tier_at(tiers, action.tier or 1).level
    higher = [t.level for t in tiers if t.level > level]
    if not higher:
        action.reason = f"{action.reason}; no known undo (already at the top tier)"[:500]
        return
    action.tier = higher[0]
    action.reason = f"{action.reason}; raised from tier {level}: no known undo"[:500]


def escalation_open(action: Action, *, now: datetime | None = None) -> None:
    """Set up a new escalation's tier and timers; call in the transaction that creates it."""
    now = now or timezone.now()
    tiers = tiers_of(action.domain_id)
    tier = tier_at(tiers, action.tier or 1)
    action.tier = tier.level
    action.sla_due_at = now + timedelta(seconds=tier.sla_seconds)
    action.expires_at = now + timedelta(
        seconds=sum(t.sla_seconds for t in tiers_from(tiers, tier.level))
    )
    action.timer_id = uuid.uuid4().hex


def escalation_opened(action: Action) -> None:
    """After the action row is written: schedule its timer, tell the open queues, and notify
    the domain's webhooks of anything above tier 1."""
    schedule_timer(action)
    live.escalation_changed(action.pk, agent_id=action.agent_id)
    if (action.tier or 1) >= 2:
        notify(action=action, event="escalation.opened")


def schedule_timer(action: Action) -> None:

    assert action.sla_due_at is not None
    action_id, timer_id, due = str(action.pk), action.timer_id, action.sla_due_at
    # A broker hiccup does not fail the committed change (the task class logs it); the
    # sweep covers a lost timer.
    enqueue_on_commit(TIMER_TASK, action_id, timer_id, eta=due)


def may_decide(user: Any, action: Action) -> bool:
    """Whether `user` may take part in deciding `action` at its current tier."""
    if action.tier is None:
        return False
    tier = tier_at(tiers_of(action.domain_id), action.tier)
    return user.has_perm(perm(tier.decide_permission))


def effective_params(action: Action) -> dict[str, Any]:
    """The params the agent will run if approved: an operator's, if modified."""
    return action.modified_params if action.modified_params is not None else action.params


def params_fingerprint(params: dict[str, Any]) -> str:
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def run_deadline(now: datetime | None = None) -> datetime:
    """Until when a yes given now lets an action start (APPROVAL_TTL)."""
    return (now or timezone.now()) + timedelta(seconds=settings.APPROVAL_TTL)


def escalation_finish(action: Action, status: str, actor: Actor, reason: str) -> Action:
    if status in (S.APPROVED, S.MODIFIED):
        action.run_by = run_deadline()
        action.decided_version = KillSwitchChange.objects.current_version()
        action.save(update_fields=["run_by", "decided_version"])
    action.settle(status, by=actor.name, reason=reason)
    audit_action_event(
        actor=actor,
        action=action,
        event=f"action.{status}",
        summary=f"{action.tool}:{action.verb} {status} at tier {action.tier}"
        + (f": {reason}" if reason else ""),
        data={"tier": action.tier, "reason": reason, "params": action.modified_params},
    )
    live.escalation_changed(action.pk, agent_id=action.agent_id)
    return action


def params_diff(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, before, after) for every top-level key whose value differs."""
    keys = sorted(set(before) | set(after))
    missing = object()
    return [
        (k, before.get(k), after.get(k))
        for k in keys
        if before.get(k, missing) != after.get(k, missing)
    ]


def params_diff_text(before: dict[str, Any], after: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {b!r} -> {a!r}" for k, b, a in params_diff(before, after)) or "none"
