from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Q

from approvals.audit import Actor, audit_record
from approvals.core import Refused
from approvals.models import Action, AgentSession, Connector, Domain, RollbackPlan, RollbackStep
from approvals.rollbacks.connectors import (
    ConnectorError,
    Context,
    Operation,
    compensation_target,
    connector_request,
    connector_supports,
    connectors_for,
)
from approvals.rollbacks.snapshots import has_state, state_of

S = Action.Status


M = RollbackStep.Method


T = RollbackStep.State


P = RollbackPlan.State


ROLLBACK_ACTOR = "rollback"


# A failed plan is still open: its failed steps may be retried, and the steps behind them run.
OPEN_PLAN_STATES = (P.DRAFT, P.AWAITING_CONFIRMATION, P.RUNNING, P.PAUSED, P.WAITING, P.FAILED)


CLOSED_PLAN_STATES = (P.COMPLETED, P.CANCELLED)


# What a person must look at; a target with one of these is not undone further.
NEEDS_A_PERSON = (T.DRIFT, T.MANUAL, T.FAILED)


FINISHED_STEPS = (T.DONE, T.SKIPPED)


def system_actor(plan: RollbackPlan) -> Actor:
    return Actor.system(f"{ROLLBACK_ACTOR}:{plan.pk}")


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
            "session": self.session,
            "agent": self.agent,
            "domain": self.domain,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "actions": list(self.action_ids),
        }


def _selected(selection: Selection) -> Q:
    scope = selection.scope
    if scope == RollbackPlan.Scope.SESSION:
        agent, _, external = selection.session.partition("/")
        session = AgentSession.objects.filter(agent__name=agent, external_id=external).first()
        if not agent or not external or session is None:
            raise Refused(
                404,
                "No such session",
                f"no session {selection.session!r} (write it as agent/session-id)",
                field="session",
            )
        q = Q(session=session)
    elif scope == RollbackPlan.Scope.AGENT:
        if not selection.agent or not Action.objects.filter(agent__name=selection.agent).exists():
            raise Refused(
                404, "No such agent", f"no actions by an agent {selection.agent!r}", field="agent"
            )
        q = Q(agent__name=selection.agent)
    elif scope == RollbackPlan.Scope.DOMAIN:
        if not Domain.objects.filter(slug=selection.domain).exists():
            raise Refused(404, "No such domain", f"no domain {selection.domain!r}", field="domain")
        q = Q(domain__slug=selection.domain)
    elif scope == RollbackPlan.Scope.ACTIONS:
        if not selection.action_ids:
            raise Refused(
                422, "No actions chosen", "list the ids of the actions to undo", field="actions"
            )
        chosen = Action.objects.filter(pk__in=selection.action_ids)
        found = {str(pk) for pk in chosen.values_list("pk", flat=True)}
        missing = [a for a in selection.action_ids if a not in found]
        if missing:
            raise Refused(
                404, "No such action", f"no action {', '.join(missing[:5])}", field="actions"
            )
        q = Q(pk__in=selection.action_ids)
    else:
        raise Refused(
            422,
            "Unknown scope",
            f"scope must be session, agent, domain or actions, not {scope!r}",
            field="scope",
        )
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


@dataclass(frozen=True)
class UndoStep:
    """How one target of an action would be undone: the request a rollback would send, or
    why none is known."""

    target: str
    method: str  # restore, compensate or manual
    request: dict[str, Any] | None = None
    problem: str = ""  # the request could not be built from the connector's templates
    note: str = ""

    @property
    def text(self) -> str:
        """The request as it would go out: the HTTP request line, headers and JSON body; or
        the Python function and its arguments."""
        request = self.request
        if request is None:
            return ""
        if "method" not in request:
            return json.dumps(request, indent=2)
        head = "\n".join([f"{request['method']} {request['url']}", *request["headers"]])
        body = request["body"]
        return head if body is None else f"{head}\n\n{json.dumps(body, indent=2)}"


@dataclass(frozen=True)
class UndoPreview:
    steps: list[UndoStep]
    more: int  # targets not shown

    @property
    def known(self) -> bool:
        return bool(self.steps) and all(s.method != M.MANUAL for s in self.steps)


UNDO_TARGETS_SHOWN = 5


def _undo_steps(action: Action) -> tuple[Connector | None, list[RollbackStep]]:
    """The domain's connector for the action's tool, and the steps a rollback would plan."""
    connector = Connector.objects.filter(domain_id=action.domain_id, tool=action.tool).first()
    return connector, _steps_for(action, connector)


def undo_known(action: Action) -> bool:
    """Whether the desk could undo every target of `action` through the domain's connector
    (restore a snapshot it has, or compensate). A read changes nothing: nothing to undo."""
    if action.verb == "read":
        return True
    _, steps = _undo_steps(action)
    return all(step.method != M.MANUAL for step in steps)


def undo_preview(action: Action) -> UndoPreview:
    """The requests a rollback of `action` would send, target by target (the first few)."""
    connector, steps = _undo_steps(action)
    shown = []
    for step in steps[:UNDO_TARGETS_SHOWN]:
        if step.method == M.MANUAL or connector is None:
            shown.append(UndoStep(step.target, M.MANUAL))
            continue
        operation: Operation = "restore" if step.method == M.RESTORE else "compensate"
        context = Context(action=action, target=step.target, key="rollback:<plan>:<step>")
        try:
            request = connector_request(connector, operation, context, step.restore_state)
        except ConnectorError as exc:
            shown.append(UndoStep(step.target, step.method, problem=str(exc), note=step.note))
            continue
        shown.append(UndoStep(step.target, step.method, request=request, note=step.note))
    return UndoPreview(shown, max(0, len(steps) - len(shown)))


def plan_create(*, actor: Actor, selection: Selection, reason: str = "") -> RollbackPlan:
    """A draft plan over the executed actions `selection` covers, newest first."""
    # Reads changed nothing: there is nothing of theirs to undo. Actions started with no
    # result reported may have run: they are planned too, and as nothing says what they left,
    # each of their steps finds the target drifted and waits for a person.
    ran = [S.SUCCEEDED, S.ROLLBACK_FAILED, S.EXECUTING]
    q = _selected(selection) & Q(status__in=ran) & ~Q(verb="read")
    with transaction.atomic():
        actions = list(
            Action.objects.select_for_update(of=("self",)).filter(q).order_by("-created_at", "-pk")
        )
        if not actions:
            raise Refused(
                422,
                "Nothing to roll back",
                f"{selection.describe()} has no executed actions that are not rolled back already",
            )
        busy = (
            RollbackStep.objects.filter(action__in=actions, plan__state__in=OPEN_PLAN_STATES)
            .values_list("plan_id", flat=True)
            .first()
        )
        if busy is not None:
            raise Refused(
                409,
                "Already in a plan",
                f"some of these actions are in open rollback "
                f"plan {busy}: finish or cancel it first",
            )
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
