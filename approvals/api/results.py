from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from approvals.agents import Quarantined, agent_admission_check
from approvals.api.proposals import FINISHED, agent_actor, past_run_by, record_refusal, session_of
from approvals.audit import audit_action_event, audit_record
from approvals.core import Refused
from approvals.killswitches import (
    Killed,
    flag_ran_during_kill,
    ran_during_kill,
)
from approvals.models import (
    EXECUTABLE,
    Action,
    Agent,
    AgentSession,
    AgentToken,
    KillSwitch,
    ReasoningStep,
)
from approvals.queue import (
    approval_binds_state,
    effective_params,
    escalation_reopen,
    execute_by,
    params_diff_text,
    targets_now,
)
from approvals.rollbacks import Difference

S = Action.Status


def action_for_token(token: AgentToken, action_id: str, *, lock: bool = False) -> Action:
    """The action `action_id` if this token may see it: its agent's, in its domain."""
    try:
        pk = uuid.UUID(action_id)
    except ValueError:
        pk = None
    actions = Action.objects.select_for_update() if lock else Action.objects.all()
    action = (
        actions.filter(pk=pk, agent_id=token.agent_id, domain_id=token.domain_id).first()
        if pk
        else None
    )
    if action is None:
        raise Refused(404, "No such action", f"no action {action_id} for this token")
    return action


@dataclass(frozen=True)
class Started:
    """The answer to an agent that says it starts an action: started, or (`reopened`) sent
    back to the queue because its targets changed since it was approved."""

    action: Action
    reopened: bool = False
    changed: tuple[Difference, ...] = ()


def action_start(*, token: AgentToken, action_id: str, params: dict[str, Any]) -> Started:
    """The agent is about to run an allowed or approved action, with `params`.

    An approval covers the state of the targets the approver was shown: the desk reads them
    again first (outside the transaction) and, if they changed, sends the action back to the
    queue instead of letting it start. Params other than those allowed are recorded and
    flagged. Once started, a result is due within EXECUTION_DEADLINE_SECONDS; without one the
    action joins the reconcile queue. Saying so again with the same params is a no-op.
    """
    action = action_for_token(token, action_id)
    if _started_already(action, params):
        return Started(action)
    read = targets_now(action, claim=action.desk_snapshot) if approval_binds_state(action) else None
    if read is not None and not read.taken:
        raise Refused(
            503,
            "State not confirmed",
            "the approval covers the state of the targets the approver was shown, and the "
            f"desk could not read them again: {read.reason}. Try again shortly.",
            extra={"retry_after": 5},
        )
    with transaction.atomic():
        switch = KillSwitch.objects.held_over(action.domain.slug)
        agent = Agent.objects.select_for_update().get(pk=token.agent_id)
        agent_admission_check(agent)
        action = action_for_token(token, action_id, lock=True)
        if _started_already(action, params):
            return Started(action)
        if action.status not in EXECUTABLE:
            raise Refused(
                409,
                "Not allowed to run",
                f"action {action.pk} is {action.status}; only an allowed or approved action starts",
            )
        if switch is not None:
            raise Killed(switch)
        if past_run_by(action):
            raise Refused(
                409,
                "Approval lapsed",
                f"action {action.pk} had to start by {action.run_by}; propose it again",
            )
        if approval_binds_state(action):
            if read is None:  # a person approved it while this request was reading
                raise Refused(
                    503,
                    "State not confirmed",
                    "it was approved while this request was under way: try again, and the "
                    "desk reads the state the approval covers",
                )
            if read.differences:
                escalation_reopen(action, read=read)
                return Started(action, reopened=True, changed=read.differences)
        allowed = effective_params(action)
        now = timezone.now()
        action.status = S.EXECUTING
        action.executing_at, action.execute_by = now, execute_by(now)
        action.ran_params = params
        action.params_mismatch = params != allowed
        action.save(
            update_fields=[
                "status",
                "executing_at",
                "execute_by",
                "ran_params",
                "params_mismatch",
                "updated_at",
            ]
        )
        audit_action_event(
            actor=agent_actor(token),
            action=action,
            event="action.params_mismatch" if action.params_mismatch else "action.executing",
            summary=f"{action.tool}:{action.verb} started"
            + (
                f" with params other than those allowed: {params_diff_text(allowed, params)}"
                if action.params_mismatch
                else ""
            ),
            data={"params": params, "params_mismatch": action.params_mismatch},
        )
    return Started(action)


def _started_already(action: Action, params: dict[str, Any]) -> bool:
    return action.status == S.EXECUTING and action.ran_params == params


def action_report_result(
    *,
    token: AgentToken,
    action_id: str,
    ok: bool,
    result: Any,
    post_state: Any,
    error: str,
) -> Action:
    with transaction.atomic():
        action = action_for_token(token, action_id, lock=True)
        if action.status in FINISHED and not action.reconciled_by:
            reported = (S.SUCCEEDED if ok else S.FAILED, result, post_state)
            if (action.status, action.result, action.post_state) == reported:
                return action  # a retried report
            raise Refused(409, "Result already reported", f"action {action.pk} is {action.status}")
        killed = ran_during_kill(action)
        late = action.status in EXECUTABLE and past_run_by(action)
        overdue = action.status == S.EXECUTING and action.reconcile_since is not None
        # Reported without saying it started: its params were not recorded, nor (for a yes a
        # person gave) the state the approval covered checked before it ran.
        unannounced = action.status in EXECUTABLE
        unchecked = unannounced and approval_binds_state(action)
        # A call cancelled by a kill switch, or started after its yes lapsed, may still have
        # run: what it did must be recorded, and is flagged.
        runs = (*EXECUTABLE, S.EXECUTING)
        if action.status in runs or killed and action.status == S.CANCELLED:
            action.status = S.SUCCEEDED if ok else S.FAILED
            action.result, action.post_state, action.error = result, post_state, error
            action.reconcile_since = None
            if killed:
                flag_ran_during_kill(action)
            action.save(
                update_fields=[
                    "status",
                    "result",
                    "post_state",
                    "error",
                    "ran_during_kill",
                    "reconcile_since",
                    "updated_at",
                ]
            )
            audit_action_event(
                actor=agent_actor(token),
                action=action,
                event="action.ran_during_kill" if killed else f"action.{action.status}",
                summary=f"{action.tool}:{action.verb} {action.status}"
                + (" while a kill switch was engaged: RAN DURING KILL" if killed else "")
                + (" after its approval lapsed (APPROVAL_TTL)" if late else "")
                + (
                    " after its result was overdue (it was waiting to be reconciled)"
                    if overdue
                    else ""
                )
                + (
                    ", never said it started: the state its approval covered was not checked"
                    if unchecked
                    else ", never said it started"
                    if unannounced
                    else ""
                )
                + (f": {error}" if error else ""),
                data={
                    "ok": ok,
                    "has_post_state": post_state is not None,
                    "ran_during_kill": killed,
                    "ran_after_run_by": late,
                    "reported_overdue": overdue,
                    "started_unannounced": unannounced,
                    "approved_state_unchecked": unchecked,
                },
            )
            return action
        # The refusal is part of the record: it commits, though the request fails.
        audit_action_event(
            actor=agent_actor(token),
            action=action,
            event="action.result_refused",
            summary=f"Result reported for an action that is {action.status}",
            data={"status": action.status, "ok": ok},
        )
    raise Refused(
        409,
        "Not allowed to run",
        f"action {action.pk} is {action.status}; only an allowed or approved action runs",
    )


@dataclass(frozen=True)
class StepData:
    index: int
    kind: str
    content: str
    data: dict[str, Any]


def steps_record(*, token: AgentToken, session_id: str, steps: list[StepData]) -> AgentSession:
    """Append reasoning steps in order. Re-sending a step already stored, unchanged, is a no-op."""
    try:
        return _steps_record(token, session_id, steps)
    except Quarantined as quarantined:
        record_refusal(
            token,
            "session.refused_quarantined",
            f"steps of session {session_id} refused: agent {quarantined.agent.name} is quarantined",
            {"session": session_id},
        )
        raise


@transaction.atomic
def _steps_record(token: AgentToken, session_id: str, steps: list[StepData]) -> AgentSession:
    agent = Agent.objects.select_for_update().get(pk=token.agent_id)
    agent_admission_check(agent)
    session = session_of(agent, token, session_id)
    existing = {s.index: s for s in session.steps.filter(index__in=[s.index for s in steps])}
    expected = session.steps.count()
    new = []
    for position, step in enumerate(steps):
        stored = existing.get(step.index)
        if stored is not None:
            if (stored.kind, stored.content, stored.data) != (step.kind, step.content, step.data):
                raise Refused(
                    409,
                    "Step already recorded",
                    f"step {step.index} of session {session_id} was recorded with other content",
                    field=f"steps.{position}",
                    extra={"next_index": expected},
                )
            continue
        if step.index != expected:
            raise Refused(
                409,
                "Steps out of order",
                f"step {step.index} cannot follow: the next step of session {session_id} "
                f"is {expected}",
                field=f"steps.{position}.index",
                extra={"next_index": expected},
            )
        new.append(
            ReasoningStep(
                session=session,
                index=step.index,
                kind=step.kind,
                content=step.content,
                data=step.data,
            )
        )
        expected += 1
    if new:
        ReasoningStep.objects.bulk_create(new)
        audit_record(
            actor=agent_actor(token),
            action="session.steps_recorded",
            domain=session.domain.slug,
            object_type="session",
            object_id=session_id,
            summary=f"{len(new)} reasoning steps recorded ({new[0].index}-{new[-1].index})",
        )
    return session
