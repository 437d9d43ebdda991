"""An action's run, seen from the queue: an approval covers the targets' state the approver was
shown, so an approved action whose targets changed before it started goes back to the queue;
and a started action whose result never came lands in the reconcile queue, where a person
reads the targets and settles what happened."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from approvals.audit import Actor, audit_action_event
from approvals.core import Refused
from approvals.models import Action, Approval
from approvals.queue.escalations import effective_params, escalation_open, escalation_opened
from approvals.rollbacks import DeskRead, desk_snapshot_take, snapshot_differences

S = Action.Status

RECONCILE_OUTCOMES = {
    "succeeded": S.SUCCEEDED,
    "failed": S.FAILED,
    "rolled_back": S.ROLLED_BACK,
}

SWEEP_BATCH = 500


def targets_now(action: Action, *, claim: Any = None) -> DeskRead:
    """The action's targets as the domain's connector reads them now, compared with `claim`.
    Network calls: never inside a transaction."""
    return desk_snapshot_take(
        domain=action.domain,
        tool=action.tool,
        verb=action.verb,
        target_ids=_targets(action),
        params=effective_params(action),
        claim=claim,
    )


def approval_binds_state(action: Action) -> bool:
    """Whether a person approved `action` having been shown the desk's read of its targets: it
    may then only start while they still read the same."""
    return action.status in (S.APPROVED, S.MODIFIED) and action.desk_snapshot is not None


def escalation_reopen(action: Action, *, read: DeskRead) -> None:
    """The targets of an approved action changed since the approver looked: the approval no
    longer holds. Call in the transaction that holds the action's lock."""
    now = timezone.now()
    changed = list(read.differences)
    action.approved_state = action.desk_snapshot
    action.desk_snapshot = read.snapshot
    action.snapshot_differs = bool(
        snapshot_differences(read.snapshot, action.pre_action_state, _targets(action))
    )
    action.state_changed_at = now
    action.status = S.ESCALATED
    action.decided_by, action.decided_at, action.decision_reason = "", None, ""
    action.run_by = None
    escalation_open(action, now=now)
    action.save()
    set_aside, _ = Approval.objects.filter(action=action).delete()
    audit_action_event(
        actor=Actor.system("desk"),
        action=action,
        event="escalation.state_changed",
        summary=f"{action.tool}:{action.verb} back in the queue at tier {action.tier}: its "
        f"targets changed since it was approved ({_described(changed)}); "
        f"{set_aside} approval(s) set aside",
        data={
            "changed": {d.target: list(d.fields) for d in changed[:50]},
            "changed_targets": len(changed),
            "approvals_set_aside": set_aside,
        },
    )
    escalation_opened(action)


def _targets(action: Action) -> list[str]:
    return [str(t) for t in action.target_ids or []]


def _described(changed: list[Any]) -> str:
    parts = [
        f"{d.target}: {', '.join(d.fields) if d.fields else 'the whole state'}" for d in changed[:5]
    ]
    more = len(changed) - len(parts)
    return "; ".join(parts) + (f"; and {more} more targets" if more > 0 else "")


def execute_by(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.EXECUTION_DEADLINE_SECONDS)


def executions_overdue_sweep(*, now: datetime | None = None) -> int:
    """Started actions whose result is overdue join the reconcile queue. Safe to run twice."""
    now = now or timezone.now()
    overdue = Action.objects.filter(status=S.EXECUTING, reconcile_since=None, execute_by__lt=now)
    moved = 0
    for action_id in overdue.values_list("pk", flat=True)[:SWEEP_BATCH]:
        with transaction.atomic():
            action = (
                Action.objects.select_for_update(of=("self",))
                .select_related("domain")
                .filter(pk=action_id, status=S.EXECUTING, reconcile_since=None)
                .first()
            )
            if action is None:
                continue  # its result came meanwhile
            action.reconcile_since = now
            action.save(update_fields=["reconcile_since", "updated_at"])
            started = action.executing_at or now
            audit_action_event(
                actor=Actor.system("desk"),
                action=action,
                event="action.reconcile_needed",
                summary=f"{action.tool}:{action.verb} started "
                f"{int((now - started).total_seconds())} s ago and reported no result: "
                "its outcome is unknown until someone reconciles it",
                data={"executing_at": started.isoformat()},
            )
            moved += 1
    return moved


def action_reconcile(*, action_id: Any, actor: Actor, outcome: str, reason: str) -> Action:
    """Settle an action whose outcome nobody reported: a person read its targets (the desk
    reads them again here, and records that read) and says what happened."""
    status = RECONCILE_OUTCOMES.get(outcome)
    if status is None:
        known = ", ".join(RECONCILE_OUTCOMES)
        raise Refused(422, "Unknown outcome", f"settle as {known}", field="outcome")
    reason = reason.strip()
    if not reason:
        raise Refused(422, "Reason required", "say what you found", field="reason")
    action = Action.objects.select_related("domain").get(pk=action_id)
    read = targets_now(action)  # outside the transaction: a network call
    with transaction.atomic():
        action = (
            Action.objects.select_for_update(of=("self",))
            .select_related("domain")
            .get(pk=action_id)
        )
        if action.status != S.EXECUTING or action.reconcile_since is None:
            raise Refused(
                409,
                "Not waiting to be reconciled",
                f"this action is {action.get_status_display().lower()}"
                + (" and its result is not overdue yet" if action.status == S.EXECUTING else ""),
            )
        now = timezone.now()
        action.status = status
        action.reconciled_by, action.reconciled_at = actor.name, now
        if read.taken:
            action.post_state = read.snapshot
        if status == S.ROLLED_BACK:
            action.rolled_back_at = now
        action.error = "" if status != S.FAILED else f"reconciled by {actor.name}: {reason}"
        action.save()
        audit_action_event(
            actor=actor,
            action=action,
            event="action.reconciled",
            summary=f"{action.tool}:{action.verb} reconciled as {status.replace('_', ' ')}: "
            f"{reason}",
            data={
                "outcome": status,
                "reason": reason,
                "read": read.snapshot if read.taken else None,
                "unread": read.reason,
            },
        )
    return action


def reconcile_queue() -> list[Action]:
    """Started actions whose result is overdue, the longest waiting first."""
    return list(
        Action.objects.filter(status=S.EXECUTING, reconcile_since__isnull=False)
        .select_related("agent", "domain")
        .order_by("reconcile_since", "pk")
    )


@dataclass(frozen=True)
class Outcomes:
    """Three views of an action's targets on the reconcile page."""

    before: Any
    expected: Any
    now: DeskRead


def expected_after(action: Action) -> Any:
    """What the targets would hold had the call run: the state before with the params' fields
    that it names set (for one target whose state is an object); otherwise unknown (None)."""
    before = action.state_before
    if not isinstance(before, dict) or len(action.target_ids or []) > 1:
        return None
    params = action.ran_params if action.ran_params is not None else effective_params(action)
    return {**before, **{k: v for k, v in params.items() if k in before}}


def run_outcomes(action: Action) -> Outcomes:
    return Outcomes(
        before=action.state_before, expected=expected_after(action), now=targets_now(action)
    )
