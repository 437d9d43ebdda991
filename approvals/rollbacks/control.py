from __future__ import annotations

from collections import defaultdict
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from approvals import live
from approvals.audit import Actor, Entry, audit_record, audit_record_many
from approvals.core import Refused
from approvals.models import Action, RollbackPlan, RollbackStep
from approvals.rollbacks.planning import CLOSED_PLAN_STATES, FINISHED_STEPS, system_actor
from approvals.rollbacks.reading import needs_confirmation, step_counts
from incidentdesk.celery import enqueue_on_commit

# Task names stay as they were when every task lived in approvals/tasks.py: messages
# already queued (timers waiting for their time, retries) carry them.
RUN_TASK = "approvals.tasks.rollback_run_task"


S = Action.Status
T = RollbackStep.State


P = RollbackPlan.State


def _locked(plan_id: UUID | str) -> RollbackPlan:
    plan = RollbackPlan.objects.select_for_update().filter(pk=plan_id).first()
    if plan is None:
        raise Refused(404, "No such plan", f"no rollback plan {plan_id}")
    return plan


def _audit_plan(
    plan: RollbackPlan, actor: Actor, event: str, summary: str, data: dict[str, Any] | None = None
) -> None:
    audit_record(
        actor=actor,
        action=f"rollback.{event}",
        domain=plan.domain.slug if plan.domain else "",
        object_type="rollback",
        object_id=plan.pk,
        summary=summary,
        data=data,
    )


def _set_state(plan: RollbackPlan, state: str, **fields: Any) -> None:
    plan.state = state
    plan.progress_at = timezone.now()
    for name, value in fields.items():
        setattr(plan, name, value)
    plan.save(update_fields=["state", "progress_at", *fields])
    live.rollback_changed(plan.pk)


def plan_start(*, plan_id: UUID | str, actor: Actor) -> RollbackPlan:
    """Start a draft plan; one over ROLLBACK_CONFIRM_OVER steps waits for a second person."""
    with transaction.atomic():
        plan = _locked(plan_id)
        if plan.state != P.DRAFT:
            raise Refused(409, "Not a draft", f"the plan is {plan.state}; only a draft starts")
        if needs_confirmation(plan):
            _set_state(plan, P.AWAITING_CONFIRMATION, started_by=actor.name)
            _audit_plan(
                plan,
                actor,
                "start_requested",
                f"Start of rollback {plan.description} ({plan.total} steps) requested; "
                "a second person must confirm",
            )
            return plan
        _run(plan, actor, started_by=actor.name)
    return plan


def plan_confirm(*, plan_id: UUID | str, actor: Actor) -> RollbackPlan:
    """The second person's yes to a large plan: it starts."""
    with transaction.atomic():
        plan = _locked(plan_id)
        if plan.state != P.AWAITING_CONFIRMATION:
            raise Refused(409, "Nothing to confirm", f"the plan is {plan.state}")
        if actor.name == plan.started_by:
            raise Refused(
                403,
                "Second person needed",
                f"{actor.name} asked to start this plan; "
                "another incident commander must confirm it",
            )
        _run(plan, actor, confirmed_by=actor.name)
    return plan


def _run(plan: RollbackPlan, actor: Actor, **fields: Any) -> None:

    fields.setdefault("started_at", plan.started_at or timezone.now())
    _set_state(plan, P.RUNNING, **fields)
    _audit_plan(
        plan,
        actor,
        "started",
        f"Rollback {plan.description} started ({plan.total} steps)",
        {k: str(v) for k, v in fields.items()},
    )
    for _ in range(settings.ROLLBACK_WORKERS):
        enqueue_on_commit(RUN_TASK, str(plan.pk))


def plan_pause(*, plan_id: UUID | str, actor: Actor) -> RollbackPlan:
    with transaction.atomic():
        plan = _locked(plan_id)
        if plan.state not in (P.RUNNING, P.WAITING):
            raise Refused(409, "Not running", f"the plan is {plan.state}")
        _set_state(plan, P.PAUSED)
        _audit_plan(plan, actor, "paused", f"Rollback {plan.description} paused")
    return plan


def plan_resume(*, plan_id: UUID | str, actor: Actor) -> RollbackPlan:
    with transaction.atomic():
        plan = _locked(plan_id)
        if plan.state != P.PAUSED:
            raise Refused(409, "Not paused", f"the plan is {plan.state}")
        _run(plan, actor)
    return plan


def plan_cancel(*, plan_id: UUID | str, actor: Actor, reason: str) -> RollbackPlan:
    """Stop for good: steps not yet run stay undone (steps in flight finish)."""
    if not reason.strip():
        raise Refused(422, "Reason required", "say why the rollback is cancelled", field="reason")
    with transaction.atomic():
        plan = _locked(plan_id)
        if plan.state in CLOSED_PLAN_STATES:
            raise Refused(409, "Already finished", f"the plan is {plan.state}")
        _set_state(plan, P.CANCELLED, finished_at=timezone.now())
        _audit_plan(plan, actor, "cancelled", f"Rollback {plan.description} cancelled: {reason}")
    return plan


RESOLUTIONS = {
    "skip": (T.DRIFT, T.MANUAL, T.FAILED),
    "force": (T.DRIFT,),
    "edit": (T.DRIFT, T.FAILED),
    "retry": (T.FAILED,),
    "done": (T.MANUAL,),
}


def step_resolve(
    *, step_id: int, actor: Actor, decision: str, state: Any = None, note: str = ""
) -> RollbackStep:
    """A person's answer to a step that waits: skip it, force it past the drift, restore an
    edited state, retry a failed one, or say a manual step was done by hand."""

    if decision not in RESOLUTIONS:
        raise Refused(
            422,
            "Unknown decision",
            f"decide {', '.join(RESOLUTIONS)}, not {decision!r}",
            field="decision",
        )
    with transaction.atomic():
        step = RollbackStep.objects.filter(pk=step_id).select_related("action").first()
        if step is None:
            raise Refused(404, "No such step", f"no rollback step {step_id}")
        plan = _locked(step.plan_id)
        step = RollbackStep.objects.select_for_update().get(pk=step_id)
        if plan.state in CLOSED_PLAN_STATES:
            raise Refused(409, "Plan finished", f"the plan is {plan.state}")
        if step.state not in RESOLUTIONS[decision]:
            raise Refused(
                409,
                "Cannot " + decision,
                f"step {step.position} is {step.state}; "
                f"{decision} applies to a step that is "
                f"{' or '.join(RESOLUTIONS[decision])}",
            )
        if decision == "edit" and state is None:
            raise Refused(
                422, "State required", "give the state to restore, as JSON", field="state"
            )
        before = {"state": step.state, "restore_state": step.restore_state}
        if decision in ("skip", "done"):
            step.state = T.SKIPPED if decision == "skip" else T.DONE
            step.finished_at = timezone.now()
        else:
            step.state = T.PENDING
            step.force = step.force or decision in ("force", "edit")
            if decision == "edit":
                step.restore_state = state
            if decision in ("edit", "retry"):
                # A new write: under the old key the target would answer what it did before.
                step.revision += 1
        step.resolved_by, step.note = actor.name, note.strip() or step.note
        step.claimed_by = ""
        step.save()
        audit_record(
            actor=actor,
            action=f"rollback.step_{decision}",
            domain=step.action.domain.slug,
            object_type="action",
            object_id=step.action_id,
            summary=f"Rollback step {step.position} ({step.method} {step.target}) of "
            f"{plan.description}: {decision} by {actor.name}"
            + (f": {note.strip()}" if note.strip() else ""),
            data={
                "plan": str(plan.pk),
                "position": step.position,
                "before": before,
                "restore_state": step.restore_state,
            },
        )
        settle_actions(plan, [step.action_id])
        # A step that runs again, or later steps on its target that it held back, run now.
        if (
            plan.state in (P.WAITING, P.FAILED, P.RUNNING)
            and plan.steps.filter(state=T.PENDING).exists()
        ):
            _set_state(plan, P.RUNNING, finished_at=None)
            enqueue_on_commit(RUN_TASK, str(plan.pk))
        else:
            settle_plan(plan)
    return step


def settle_actions(plan: RollbackPlan, action_ids: list[Any]) -> None:
    """Actions whose steps in this plan are all finished are rolled back (or not)."""
    if not action_ids:
        return
    states: dict[Any, set[str]] = defaultdict(set)
    for action_id, state in plan.steps.filter(action_id__in=action_ids).values_list(
        "action_id", "state"
    ):
        states[action_id].add(state)
    rolled_back = [a for a, s in states.items() if s <= set(FINISHED_STEPS) and T.DONE in s]
    failed = [a for a, s in states.items() if T.FAILED in s]
    now = timezone.now()
    entries = []
    for ids, status in ((rolled_back, S.ROLLED_BACK), (failed, S.ROLLBACK_FAILED)):
        if not ids:
            continue
        changing = list(
            Action.objects.filter(pk__in=ids)
            .exclude(status=status)
            .select_related("domain")
            .only("pk", "tool", "verb", "domain__slug")
        )
        Action.objects.filter(pk__in=[a.pk for a in changing]).update(
            status=status, rolled_back_at=now if status == S.ROLLED_BACK else None, updated_at=now
        )
        entries += [
            Entry(
                action=f"action.{status}",
                domain=a.domain.slug,
                object_type="action",
                object_id=a.pk,
                summary=f"{a.tool}:{a.verb} {status.replace('_', ' ')} by "
                f"rollback {plan.description}",
                data={"plan": str(plan.pk)},
            )
            for a in changing
        ]
    audit_record_many(actor=system_actor(plan), entries=entries)


def settle_plan(plan: RollbackPlan, *, nothing_claimable: bool = False) -> None:
    """With nothing left to run: waiting for a person, failed, or completed. Steps still
    pending when nothing could be claimed wait behind a step that needs a person."""
    if plan.state not in (P.RUNNING, P.WAITING, P.FAILED):
        return
    counts = {state: n for state, n in step_counts(plan).items() if n}
    if counts.get(T.RUNNING) or counts.get(T.PENDING) and not nothing_claimable:
        return
    if counts.get(T.DRIFT) or counts.get(T.MANUAL):
        state = P.WAITING
    elif counts.get(T.FAILED):
        state = P.FAILED
    else:
        state = P.COMPLETED
    if state == plan.state:
        return
    final = state in (P.COMPLETED, P.FAILED)
    _set_state(plan, state, finished_at=timezone.now() if final else None)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    _audit_plan(
        plan,
        system_actor(plan),
        state,
        f"Rollback {plan.description} {state}: {summary}",
        {"counts": counts},
    )
