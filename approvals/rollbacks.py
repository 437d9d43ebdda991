"""Rollbacks: undo what agents did, newest first, through connectors, never through the agent.

A plan holds one step per executed action and target. Each step restores the target's
pre-action snapshot (the desk's own read of it where the desk took one when the action was
proposed, else the state the agent claimed), calls a compensating action, or, when neither is
possible, is a manual step for a person. Before a step the desk reads the target: if it no
longer reads what the action left (drift), the step waits for a person (skip, force, or edit
the state to restore). After a step it reads the target again and the step fails loudly
unless the target reads what was restored.

Execution: Celery tasks run a plan in batches. A batch is claimed under the plan's row lock
with a conditional update (pending -> running, with the worker's name and the time); a step
on a target is never claimed while an earlier step on that target is unfinished, so each
target is undone newest first however many workers run. Every write to a target carries the
step's Idempotency-Key (`rollback:<plan>:<position>`), so a step re-run after a worker died
applies nothing twice. A claimed step left running past ROLLBACK_LEASE_SECONDS belongs to a
worker that died: the next batch claims it again, and the sweep restarts plans that stalled.

Rollback calls are system actions: they are steps, not Actions, so agents never see them and
policies never count them.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import DatabaseError, close_old_connections, transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from approvals import live
from approvals.audit import Actor, Entry, audit_record, audit_record_many
from approvals.connectors import (
    ConnectorError,
    Context,
    compensation_expected,
    compensation_target,
    connector_call,
    connector_supports,
    connectors_for,
    has_state,
    state_of,
)
from approvals.errors import Refused
from approvals.models import (
    Action,
    AgentSession,
    Connector,
    Domain,
    RollbackPlan,
    RollbackStep,
)
from approvals.roles import perm

log = logging.getLogger(__name__)
P = RollbackPlan.State
T = RollbackStep.State
M = RollbackStep.Method
S = Action.Status
ROLLBACK_ACTOR = "rollback"
# A failed plan is still open: its failed steps may be retried, and the steps behind them run.
OPEN_PLAN_STATES = (P.DRAFT, P.AWAITING_CONFIRMATION, P.RUNNING, P.PAUSED, P.WAITING, P.FAILED)
CLOSED_PLAN_STATES = (P.COMPLETED, P.CANCELLED)
# What a person must look at; a target with one of these is not undone further.
NEEDS_A_PERSON = (T.DRIFT, T.MANUAL, T.FAILED)
FINISHED_STEPS = (T.DONE, T.SKIPPED)


def system_actor(plan: RollbackPlan) -> Actor:
    return Actor.system(f"{ROLLBACK_ACTOR}:{plan.pk}")


# -- Snapshots ------------------------------------------------------------------------------

RESTORES_DESK_READ = "restores the desk's own read of the target"
RESTORES_AGENT_CLAIM = "restores the pre-action state the agent claimed"


def restore_source(action: Action, target: str, targets: list[str]) -> tuple[bool, Any, str]:
    """What a restore of `target` puts back: (whether there is a state, the state, a note).
    The desk's own read where it read the target (a target it read as absent has no state
    to restore); otherwise the agent's claim."""
    desk = state_of(action.desk_snapshot, target, targets)
    if desk is not None:
        return True, desk, RESTORES_DESK_READ
    claimed = state_of(action.pre_action_state, target, targets)
    return has_state(action.pre_action_state, target, targets), claimed, RESTORES_AGENT_CLAIM


# -- Planning -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """What a plan covers: one of session, agent, domain (each optionally in a time window)
    or a hand-picked list of action ids."""

    scope: str
    session: str = ""  # "<agent>/<session id>"
    agent: str = ""
    domain: str = ""
    since: datetime | None = None
    until: datetime | None = None
    action_ids: tuple[str, ...] = ()

    def describe(self) -> str:
        window = ""
        if self.since or self.until:
            start = self.since.isoformat(timespec="seconds") if self.since else "the start"
            end = self.until.isoformat(timespec="seconds") if self.until else "now"
            window = f" from {start} to {end}"
        match self.scope:
            case RollbackPlan.Scope.SESSION:
                return f"session {self.session}{window}"
            case RollbackPlan.Scope.AGENT:
                return f"agent {self.agent}{window}"
            case RollbackPlan.Scope.DOMAIN:
                return f"domain {self.domain}{window}"
        return f"{len(self.action_ids)} chosen actions"

    def as_json(self) -> dict[str, Any]:
        return {
            "session": self.session, "agent": self.agent, "domain": self.domain,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "actions": list(self.action_ids),
        }  # fmt: skip


def _selected(selection: Selection) -> Q:
    scope = selection.scope
    if scope == RollbackPlan.Scope.SESSION:
        agent, _, external = selection.session.partition("/")
        session = AgentSession.objects.filter(agent__name=agent, external_id=external).first()
        if not agent or not external or session is None:
            raise Refused(404, "No such session", f"no session {selection.session!r} "
                          "(write it as agent/session-id)", field="session")  # fmt: skip
        q = Q(session=session)
    elif scope == RollbackPlan.Scope.AGENT:
        if not selection.agent or not Action.objects.filter(agent__name=selection.agent).exists():
            raise Refused(404, "No such agent", f"no actions by an agent {selection.agent!r}",
                          field="agent")  # fmt: skip
        q = Q(agent__name=selection.agent)
    elif scope == RollbackPlan.Scope.DOMAIN:
        if not Domain.objects.filter(slug=selection.domain).exists():
            raise Refused(404, "No such domain", f"no domain {selection.domain!r}", field="domain")
        q = Q(domain__slug=selection.domain)
    elif scope == RollbackPlan.Scope.ACTIONS:
        if not selection.action_ids:
            raise Refused(422, "No actions chosen", "list the ids of the actions to undo",
                          field="actions")  # fmt: skip
        chosen = Action.objects.filter(pk__in=selection.action_ids)
        found = {str(pk) for pk in chosen.values_list("pk", flat=True)}
        missing = [a for a in selection.action_ids if a not in found]
        if missing:
            raise Refused(404, "No such action", f"no action {', '.join(missing[:5])}",
                          field="actions")  # fmt: skip
        q = Q(pk__in=selection.action_ids)
    else:
        raise Refused(422, "Unknown scope", f"scope must be session, agent, domain or actions, "
                      f"not {scope!r}", field="scope")  # fmt: skip
    if selection.since:
        q &= Q(created_at__gte=selection.since)
    if selection.until:
        q &= Q(created_at__lte=selection.until)
    return q


def _steps_for(action: Action, connector: Connector | None) -> list[RollbackStep]:
    targets = [str(t) for t in action.target_ids or []]
    can_restore = connector_supports(connector, "restore")
    can_compensate = connector_supports(connector, "compensate")
    if not targets:
        targets = [compensation_target(connector, action) if connector else ""]
    steps = []
    for target in targets:
        has_snapshot, snapshot, source = restore_source(action, target, targets)
        restorable = can_restore and has_snapshot
        method = M.RESTORE if restorable else M.COMPENSATE if can_compensate else M.MANUAL
        steps.append(
            RollbackStep(
                action=action,
                target=target,
                method=method,
                state=T.MANUAL if method == M.MANUAL else T.PENDING,
                expected_state=state_of(action.post_state, target, targets),
                restore_state=snapshot,
                note=source if method == M.RESTORE else "",
            )
        )
    return steps


def plan_create(*, actor: Actor, selection: Selection, reason: str = "") -> RollbackPlan:
    """A draft plan over the executed actions `selection` covers, newest first."""
    # Reads changed nothing: there is nothing of theirs to undo.
    q = _selected(selection) & Q(status__in=[S.SUCCEEDED, S.ROLLBACK_FAILED]) & ~Q(verb="read")
    with transaction.atomic():
        actions = list(Action.objects.select_for_update(of=("self",)).filter(q)
                       .order_by("-created_at", "-pk"))  # fmt: skip
        if not actions:
            raise Refused(422, "Nothing to roll back", f"{selection.describe()} has no executed "
                          "actions that are not rolled back already")  # fmt: skip
        busy = (
            RollbackStep.objects.filter(action__in=actions, plan__state__in=OPEN_PLAN_STATES)
            .values_list("plan_id", flat=True)
            .first()
        )
        if busy is not None:
            raise Refused(409, "Already in a plan", f"some of these actions are in open rollback "
                          f"plan {busy}: finish or cancel it first")  # fmt: skip
        domains = {a.domain_id for a in actions}
        plan = RollbackPlan.objects.create(
            scope=selection.scope,
            description=selection.describe(),
            selection=selection.as_json(),
            domain_id=next(iter(domains)) if len(domains) == 1 else None,
            created_by=actor.name,
            reason=reason.strip(),
        )
        connectors = connectors_for(domains)
        steps = []
        for action in actions:
            steps.extend(_steps_for(action, connectors.get((action.domain_id, action.tool))))
        for position, step in enumerate(steps):
            step.plan, step.position = plan, position
        RollbackStep.objects.bulk_create(steps, batch_size=2000)
        plan.total = len(steps)
        plan.save(update_fields=["total"])
        manual = sum(1 for s in steps if s.method == M.MANUAL)
        from_desk = sum(1 for s in steps if s.note == RESTORES_DESK_READ)
        from_agent = sum(1 for s in steps if s.note == RESTORES_AGENT_CLAIM)
        audit_record(
            actor=actor,
            action="rollback.planned",
            domain=plan.domain.slug if plan.domain else "",
            object_type="rollback",
            object_id=plan.pk,
            summary=f"Rollback planned for {plan.description}: {len(steps)} steps over "
            f"{len(actions)} actions, {manual} manual",
            data={
                "selection": plan.selection,
                "steps": len(steps),
                "manual": manual,
                "restores_desk_read": from_desk,
                "restores_agent_claim": from_agent,
            },
        )
    return plan


# -- Control --------------------------------------------------------------------------------


def _locked(plan_id: UUID | str) -> RollbackPlan:
    plan = RollbackPlan.objects.select_for_update().filter(pk=plan_id).first()
    if plan is None:
        raise Refused(404, "No such plan", f"no rollback plan {plan_id}")
    return plan


def _audit_plan(plan: RollbackPlan, actor: Actor, event: str, summary: str,
                data: dict[str, Any] | None = None) -> None:  # fmt: skip
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


def needs_confirmation(plan: RollbackPlan) -> bool:
    return plan.total > settings.ROLLBACK_CONFIRM_OVER


def plan_start(*, plan_id: UUID | str, actor: Actor) -> RollbackPlan:
    """Start a draft plan; one over ROLLBACK_CONFIRM_OVER steps waits for a second person."""
    with transaction.atomic():
        plan = _locked(plan_id)
        if plan.state != P.DRAFT:
            raise Refused(409, "Not a draft", f"the plan is {plan.state}; only a draft starts")
        if needs_confirmation(plan):
            _set_state(plan, P.AWAITING_CONFIRMATION, started_by=actor.name)
            _audit_plan(plan, actor, "start_requested",
                        f"Start of rollback {plan.description} ({plan.total} steps) requested; "
                        "a second person must confirm")  # fmt: skip
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
            raise Refused(403, "Second person needed", f"{actor.name} asked to start this plan; "
                          "another incident commander must confirm it")  # fmt: skip
        _run(plan, actor, confirmed_by=actor.name)
    return plan


def _run(plan: RollbackPlan, actor: Actor, **fields: Any) -> None:
    from approvals.tasks import rollback_run_task

    fields.setdefault("started_at", plan.started_at or timezone.now())
    _set_state(plan, P.RUNNING, **fields)
    _audit_plan(plan, actor, "started", f"Rollback {plan.description} started "
                f"({plan.total} steps)", {k: str(v) for k, v in fields.items()})  # fmt: skip
    for _ in range(settings.ROLLBACK_WORKERS):
        rollback_run_task.delay_on_commit(str(plan.pk))


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
    from approvals.tasks import rollback_run_task

    if decision not in RESOLUTIONS:
        raise Refused(422, "Unknown decision", f"decide {', '.join(RESOLUTIONS)}, "
                      f"not {decision!r}", field="decision")  # fmt: skip
    with transaction.atomic():
        step = RollbackStep.objects.filter(pk=step_id).select_related("action").first()
        if step is None:
            raise Refused(404, "No such step", f"no rollback step {step_id}")
        plan = _locked(step.plan_id)
        step = RollbackStep.objects.select_for_update().get(pk=step_id)
        if plan.state in CLOSED_PLAN_STATES:
            raise Refused(409, "Plan finished", f"the plan is {plan.state}")
        if step.state not in RESOLUTIONS[decision]:
            raise Refused(409, "Cannot " + decision, f"step {step.position} is {step.state}; "
                          f"{decision} applies to a step that is "
                          f"{' or '.join(RESOLUTIONS[decision])}")  # fmt: skip
        if decision == "edit" and state is None:
            raise Refused(422, "State required", "give the state to restore, as JSON",
                          field="state")  # fmt: skip
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
            data={"plan": str(plan.pk), "position": step.position, "before": before,
                  "restore_state": step.restore_state},
        )  # fmt: skip
        _settle_actions(plan, [step.action_id])
        # A step that runs again, or later steps on its target that it held back, run now.
        if (
            plan.state in (P.WAITING, P.FAILED, P.RUNNING)
            and plan.steps.filter(state=T.PENDING).exists()
        ):
            _set_state(plan, P.RUNNING, finished_at=None)
            rollback_run_task.delay_on_commit(str(plan.pk))
        else:
            _settle_plan(plan)
    return step


# -- Execution ------------------------------------------------------------------------------


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _target_key(step: RollbackStep) -> str:
    return step.target or f"action:{step.action_id}"


def _claim(plan_id: UUID | str, worker: str, size: int) -> list[RollbackStep]:
    """Take the next steps that may run now, under the plan's lock. When none can, settle the
    plan under that same lock (waiting for a person, failed or completed)."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.ROLLBACK_LEASE_SECONDS)
    with transaction.atomic():
        plan = RollbackPlan.objects.select_for_update().filter(pk=plan_id).first()
        if plan is None or plan.state != P.RUNNING:
            return []
        steps = plan.steps.all()
        # A step whose worker died on it again and again is not tried forever.
        steps.filter(
            state=T.RUNNING, claimed_at__lt=stale, attempts__gte=settings.ROLLBACK_MAX_ATTEMPTS
        ).update(state=T.FAILED, finished_at=now, note=f"gave up: the worker running it "
                 f"stopped {settings.ROLLBACK_MAX_ATTEMPTS} times")  # fmt: skip
        # Earliest unfinished step per target held elsewhere: later steps on it must wait.
        blocking: dict[str, int] = {}
        held = steps.filter(Q(state__in=NEEDS_A_PERSON) | Q(state=T.RUNNING, claimed_at__gte=stale))
        for target, action_id, position in held.values_list("target", "action_id", "position"):
            key = target or f"action:{action_id}"
            blocking[key] = min(position, blocking.get(key, position))
        candidates = steps.filter(
            Q(state=T.PENDING) | Q(state=T.RUNNING, claimed_at__lt=stale)
        ).order_by("position")
        chosen = []
        for step in candidates.iterator(chunk_size=max(size, 100)):
            key = _target_key(step)
            if blocking.get(key, step.position + 1) < step.position:
                continue
            chosen.append(step)
            if len(chosen) == size:
                break
        if not chosen:
            _settle_plan(plan, nothing_claimable=True)
            return []
        steps.filter(pk__in=[s.pk for s in chosen]).update(
            state=T.RUNNING, claimed_by=worker, claimed_at=now, attempts=F("attempts") + 1
        )
        # What later steps on the same targets restore: after a worker died, a target may
        # already read one of them (the chain went further than was recorded).
        later: dict[str, list[Any]] = defaultdict(list)
        targets = {s.target for s in chosen if s.target}
        first = min(s.position for s in chosen)
        for target, restore in (
            steps.filter(target__in=targets, position__gt=first)
            .order_by("position")
            .values_list("target", "restore_state")
        ):
            later[target].append(restore)
    # What connectors need of each action, loaded once per action (snapshots stay behind:
    # the steps carry their own part of them).
    actions = (
        Action.objects.select_related("domain")
        .defer("pre_action_state", "desk_snapshot", "post_state", "compensation", "modified_params")
        .in_bulk({s.action_id for s in chosen})
    )
    for step in chosen:
        step.action = actions[step.action_id]
        step.later_restores = later.get(step.target, []) if step.target else []
    return chosen


@dataclass
class Outcome:
    state: str
    current: Any = None
    note: str = ""


def drifted(step: RollbackStep, current: Any) -> bool:
    """The target no longer reads what the action left: a person decides what happens."""
    return bool(current != step.expected_state)


def _undone(current: Any, expected: Any, *, partial: bool) -> bool:
    """Whether the target reads as undone: equal to the snapshot, or for a compensation
    with an `expect`, holding every field it names."""
    if partial and isinstance(expected, dict) and isinstance(current, dict):
        return all(current.get(k) == v for k, v in expected.items())
    return bool(current == expected)


def _execute(step: RollbackStep, connector: Connector | None) -> Outcome:
    """One step against its target: drift check, restore or compensate, verify."""
    if connector is None:
        return Outcome(T.FAILED, note=f"no connector for {step.action.tool} in "
                       f"{step.action.domain.slug}")  # fmt: skip
    context = Context(action=step.action, target=step.target, key=step.idempotency_key)
    expected_after, partial = step.restore_state, False
    try:
        if step.method == M.COMPENSATE:
            expect = compensation_expected(connector, context)
            if expect is not None:
                expected_after, partial = expect, True
        current = connector_call(connector, "read", context)
        if not step.force and drifted(step, current):
            if _undone(current, expected_after, partial=partial):
                # Already undone: a worker that died after applying it, before recording it.
                return Outcome(T.DONE, current, "the target already read as undone")
            if step.method == M.RESTORE and any(current == s for s in step.later_restores):
                # ... and went on to older steps on this target before it died.
                return Outcome(T.DONE, current, "the target already reads an older snapshot")
            return Outcome(T.DRIFT, current, "the target changed since the action: it no "
                           "longer reads what the action left")  # fmt: skip
        if step.method == M.RESTORE:
            connector_call(connector, "restore", context, step.restore_state)
        else:
            connector_call(connector, "compensate", context)
        after = connector_call(connector, "read", context)
    except ConnectorError as exc:
        return Outcome(T.FAILED, note=str(exc))
    if not _undone(after, expected_after, partial=partial):
        return Outcome(T.FAILED, after, f"verification failed: after the {step.method} the "
                       "target does not read the state it should")  # fmt: skip
    return Outcome(T.DONE, after, "forced past drift" if step.force else "")


def _execute_group(steps: list[RollbackStep], connectors: dict[tuple[int, str], Connector]
                   ) -> list[tuple[RollbackStep, Outcome | None]]:  # fmt: skip
    """Steps on one target, in order; after one that did not finish, the rest go back."""
    results: list[tuple[RollbackStep, Outcome | None]] = []
    stopped = False
    for step in steps:
        if stopped:
            results.append((step, None))
            continue
        outcome = _execute(step, connectors.get((step.action.domain_id, step.action.tool)))
        results.append((step, outcome))
        stopped = outcome.state != T.DONE
    return results


def _record(plan_id: UUID | str, worker: str,
            results: list[tuple[RollbackStep, Outcome | None]]) -> None:  # fmt: skip
    """Write a batch's outcomes, for the steps this worker still holds (a step whose lease
    ran out may have been claimed again by another worker: its outcome is theirs to write)."""
    now = timezone.now()
    with transaction.atomic():
        plan = RollbackPlan.objects.select_for_update().get(pk=plan_id)
        steps = plan.steps.all()
        mine = set(
            steps.filter(pk__in=[s.pk for s, _ in results], state=T.RUNNING, claimed_by=worker)
            .values_list("pk", flat=True)
        )  # fmt: skip
        results = [(s, o) for s, o in results if s.pk in mine]
        released = [s.pk for s, o in results if o is None]
        steps.filter(pk__in=released).update(state=T.PENDING, claimed_by="", claimed_at=None)
        # Done steps in one statement per note; what a target read is kept for the others.
        done: dict[str, list[int]] = defaultdict(list)
        for step, outcome in results:
            if outcome is None:
                continue
            if outcome.state == T.DONE:
                done[outcome.note].append(step.pk)
            else:
                steps.filter(pk=step.pk).update(
                    state=outcome.state, current_state=outcome.current, note=outcome.note,
                    finished_at=now if outcome.state == T.FAILED else None,
                )  # fmt: skip
        for note, ids in done.items():
            steps.filter(pk__in=ids).update(state=T.DONE, note=note, finished_at=now)
        entries = [
            Entry(
                action=f"rollback.step_{outcome.state}",
                domain=step.action.domain.slug,
                object_type="action",
                object_id=step.action_id,
                summary=f"Rollback step {step.position}: {step.method} "
                f"{step.target or step.action.tool} {outcome.state}"
                + (f": {outcome.note}" if outcome.note else ""),
                data={
                    "plan": str(plan_id),
                    "position": step.position,
                    "key": step.idempotency_key,
                    "method": step.method,
                    "target": step.target,
                    "forced": step.force,
                },
            )  # fmt: skip
            for step, outcome in results
            if outcome is not None
        ]
        audit_record_many(actor=system_actor(plan), entries=entries)
        _settle_actions(plan, list({s.action_id for s, o in results if o is not None}))
        plan.progress_at = now
        plan.save(update_fields=["progress_at"])
        live.rollback_changed(plan.pk)


def _settle_actions(plan: RollbackPlan, action_ids: list[Any]) -> None:
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
            Entry(action=f"action.{status}", domain=a.domain.slug, object_type="action",
                  object_id=a.pk, summary=f"{a.tool}:{a.verb} {status.replace('_', ' ')} by "
                  f"rollback {plan.description}", data={"plan": str(plan.pk)})
            for a in changing
        ]  # fmt: skip
    audit_record_many(actor=system_actor(plan), entries=entries)


def _settle_plan(plan: RollbackPlan, *, nothing_claimable: bool = False) -> None:
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
    _audit_plan(plan, system_actor(plan), state, f"Rollback {plan.description} {state}: "
                f"{summary}", {"counts": counts})  # fmt: skip


def rollback_run(*, plan_id: UUID | str, budget_seconds: float | None = None) -> bool:
    """Run a plan's steps until none can run or the time budget is spent. Returns whether
    there is more to do (the caller queues another run). Safe to run twice, at once too."""
    worker = worker_name()
    budget = settings.ROLLBACK_TASK_SECONDS if budget_seconds is None else budget_seconds
    deadline = time.monotonic() + budget
    connectors: dict[tuple[int, str], Connector] = {}
    size = settings.ROLLBACK_BATCH
    with (
        ThreadPoolExecutor(settings.ROLLBACK_CONCURRENCY, initializer=close_old_connections)
        as pool,
        _Heartbeat(plan_id, worker),
    ):  # fmt: skip
        while time.monotonic() < deadline:
            steps = _claim(plan_id, worker, size)
            if not steps:
                return False
            missing = {s.action.domain_id for s in steps} - {d for d, _ in connectors}
            if missing:
                connectors.update(connectors_for(missing))
            groups: dict[str, list[RollbackStep]] = defaultdict(list)
            for step in steps:
                groups[_target_key(step)].append(step)
            results = [
                r for done in pool.map(lambda g: _execute_group(g, connectors), groups.values())
                for r in done
            ]  # fmt: skip
            _record(plan_id, worker, results)
    return True


class _Heartbeat:
    """Renews this worker's claims while it works: only a worker that stopped loses them."""

    def __init__(self, plan_id: UUID | str, worker: str) -> None:
        self.plan_id, self.worker = UUID(str(plan_id)), worker
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="rollback-heartbeat", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def run(self) -> None:
        try:
            while not self.stop.wait(settings.ROLLBACK_LEASE_SECONDS / 3):
                try:
                    RollbackStep.objects.filter(
                        plan_id=self.plan_id, state=T.RUNNING, claimed_by=self.worker
                    ).update(claimed_at=timezone.now())
                except DatabaseError:
                    log.exception("renewing rollback claims failed; trying again")
        finally:
            close_old_connections()


def rollbacks_stalled() -> list[str]:
    """Running plans with no progress for a lease: their worker died (or their task was lost)."""
    stale = timezone.now() - timedelta(seconds=settings.ROLLBACK_LEASE_SECONDS)
    return [
        str(pk)
        for pk in RollbackPlan.objects.filter(state=P.RUNNING, progress_at__lt=stale).values_list(
            "pk", flat=True
        )
    ]


# -- Reading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    plan: RollbackPlan
    counts: dict[str, int]
    finished: int
    rate: float | None  # steps finished per second since the start

    @property
    def percent(self) -> int:
        return int(100 * self.finished / self.plan.total) if self.plan.total else 100


def step_counts(plan: RollbackPlan) -> dict[str, int]:
    """How many of the plan's steps are in each state (every state, zeros too)."""
    counts = dict.fromkeys(T.values, 0)
    counts.update(dict(plan.steps.values_list("state").annotate(n=Count("id"))))
    return counts


def plan_progress(plan: RollbackPlan) -> Progress:
    counts = step_counts(plan)
    finished = sum(counts[s] for s in (*FINISHED_STEPS, T.FAILED))
    rate = None
    if plan.started_at and counts[T.DONE]:
        end = plan.finished_at or timezone.now()
        seconds = max((end - plan.started_at).total_seconds(), 0.001)
        rate = counts[T.DONE] / seconds
    return Progress(plan, counts, finished, rate)


def steps_waiting(plan: RollbackPlan, limit: int = 50) -> list[RollbackStep]:
    return list(
        plan.steps.filter(state__in=NEEDS_A_PERSON)
        .select_related("action", "action__agent")
        .order_by("position")[:limit]
    )


def plan_context(plan: RollbackPlan, user: Any) -> dict[str, Any]:
    """What the live parts of a plan page show (the page and websocket pushes)."""
    progress = plan_progress(plan)
    return {
        "plan": plan,
        "progress": progress,
        "waiting": steps_waiting(plan),
        "recent": plan.steps.filter(state__in=[RollbackStep.State.DONE, RollbackStep.State.FAILED])
        .exclude(finished_at=None)
        .select_related("action")
        .order_by("-finished_at")[:10],
        "can_run": user.has_perm(perm("run_rollback")),
        "needs_confirmation": needs_confirmation(plan),
    }


def read_current(steps: list[RollbackStep]) -> dict[int, tuple[Any, str]]:
    """Each step's target as it reads now: (state, error). Reads run side by side."""
    connectors = connectors_for({s.action.domain_id for s in steps})

    def read(step: RollbackStep) -> tuple[int, tuple[Any, str]]:
        connector = connectors.get((step.action.domain_id, step.action.tool))
        if connector is None or not connector_supports(connector, "read"):
            return step.pk, (None, "no connector reads this target")
        context = Context(action=step.action, target=step.target, key=f"preview:{step.pk}")
        try:
            return step.pk, (connector_call(connector, "read", context), "")
        except ConnectorError as exc:
            return step.pk, (None, str(exc))

    readable = [s for s in steps if s.method != M.MANUAL]
    with ThreadPoolExecutor(min(8, max(1, len(readable)))) as pool:
        return dict(pool.map(read, readable))
