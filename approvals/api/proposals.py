"""Proposed tool calls: the policy verdict, results, and the reasoning that led to them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from approvals.agents import Quarantined, agent_admission_check, token_allows
from approvals.api.idempotency import Claim, idempotency_claim, idempotency_complete
from approvals.audit import Actor, Entry, action_entry, audit_record
from approvals.core import Refused
from approvals.killswitches import (
    Killed,
    admission_check,
    agent_quarantine,
    switch_info,
)
from approvals.models import EXECUTABLE, Action, Agent, AgentSession, AgentToken, KillSwitch
from approvals.policy import (
    FLAPPING_RULE,
    CallClaim,
    ClaimRefused,
    Proposal,
    Trace,
    Verdict,
    policy_current,
    policy_decide,
    proposal_from,
)
from approvals.queue import (
    effective_params,
    escalation_open,
    escalation_opened,
    escalation_raise_without_undo,
    run_deadline,
)
from approvals.rollbacks import DeskRead, compensation_connected, desk_snapshot_take

S = Action.Status


STATUS_OF_OUTCOME = {"allow": S.ALLOWED, "deny": S.DENIED, "escalate": S.ESCALATED}


FINISHED = frozenset({S.SUCCEEDED, S.FAILED})


def agent_actor(token: AgentToken) -> Actor:
    return Actor("agent", token.agent.name)


@dataclass(frozen=True)
class ProposalData:
    """A proposal as the agent sent it: claims, checked against the registry."""

    session_id: str
    step_index: int | None
    tool: str
    verb: str | None
    params: dict[str, Any]
    target_ids: list[str]
    amount: Decimal | None
    currency: str
    blast_records: int | None
    blast_population: int | None
    pre_action_state: Any
    compensation: dict[str, Any] | None


def call_claim(token: AgentToken, data: ProposalData, *, connector: bool = True) -> CallClaim:
    """What the agent claims about its call. Without `connector` the caller knows the domain
    has no connector for the tool (the lean path checks it in its transaction)."""
    compensation_tool = (data.compensation or {}).get("tool")
    # For a tool the registry does not know: the domain's connector may still compensate it.
    connected = (
        connector
        and compensation_tool is None
        and data.pre_action_state is None
        and compensation_connected(token.domain, data.tool)
    )
    return CallClaim(
        agent=token.agent.name,
        tool=data.tool,
        verb=data.verb,
        params=data.params,
        target_ids=tuple(data.target_ids),
        amount=data.amount,
        currency=data.currency,
        blast_records=data.blast_records,
        blast_population=data.blast_population,
        has_snapshot=data.pre_action_state is not None,
        compensation_tool=compensation_tool,
        compensation_connected=connected,
    )


def _registry_refusal(exc: ClaimRefused) -> Refused:
    return Refused(422, "Contradicts the tool registry", exc.detail, field=exc.field)


def _decide(
    token: AgentToken, agent: Agent | None, data: ProposalData
) -> tuple[Proposal, Verdict, list[Trace]]:
    try:
        return policy_decide(token.domain, agent, call_claim(token, data))
    except ClaimRefused as exc:
        raise _registry_refusal(exc) from None


def record_refusal(token: AgentToken, event: str, summary: str, data: dict[str, Any]) -> None:
    """A refused request is part of the record: audited in a transaction of its own, so it
    stays though the request fails."""
    with transaction.atomic():
        audit_record(
            actor=agent_actor(token),
            action=event,
            domain=token.domain.slug,
            object_type="token",
            object_id=token.prefix,
            summary=summary,
            data=data,
        )


def check_scope(token: AgentToken, *, tool: str, verb: str, session_id: str = "") -> None:
    """Refuse (403) a tool call outside the token's scopes, and record the attempt."""
    if token_allows(token, tool=tool, verb=verb):
        return
    record_refusal(
        token,
        "action.out_of_scope",
        f"{tool}:{verb} refused: outside the token's scopes",
        {"tool": tool, "verb": verb, "scopes": token.scopes, "session": session_id},
    )
    raise Refused(
        403,
        "Out of scope",
        f"this token may not {verb} with {tool}; its scopes are {', '.join(token.scopes)}",
    )


@dataclass(frozen=True)
class Explained:
    proposal: Proposal
    verdict: Verdict
    trace: list[Trace]
    in_scope: bool


def action_explain(*, token: AgentToken, data: ProposalData) -> Explained:
    """The verdict a proposal would get now, and every step to it, through the same function as
    a proposal. Nothing is proposed, but the question is audited: explain probes thresholds."""
    proposal, verdict, trace = _decide(token, token.agent, data)
    in_scope = token_allows(token, tool=proposal.tool, verb=proposal.verb)
    with transaction.atomic():
        audit_record(
            actor=agent_actor(token),
            action="action.explained",
            domain=token.domain.slug,
            object_type="token",
            object_id=token.prefix,
            summary=f"Asked what {proposal.tool}:{proposal.verb} would get: {verdict.outcome} "
            f"by {verdict.rule}",
            data={
                "tool": proposal.tool,
                "verb": proposal.verb,
                "outcome": verdict.outcome,
                "rule": verdict.rule,
                "policy_version": verdict.version,
                "amount": None if proposal.amount is None else f"{proposal.amount:f}",
                "targets": len(proposal.target_ids),
                "in_scope": in_scope,
            },
        )
    return Explained(proposal, verdict, trace, in_scope)


@dataclass(frozen=True)
class Proposed:
    """What became of a proposal: how its Idempotency-Key was taken, and the answer to give."""

    claim: Claim
    status: int | None = None
    body: dict[str, Any] | None = None
    action: Action | None = None  # only when recorded by this call


def action_propose(
    *, token: AgentToken, data: ProposalData, key: str, fingerprint: str
) -> Proposed:
    """Record a proposed tool call with the policy's verdict, once per Idempotency-Key.

    Call it outside any transaction: a refusal for scope is audited in a transaction of its own,
    and the proposal, its audit event and the key's stored answer commit together. Scopes are
    checked against the tool's registered verb, never the agent's word.
    """
    document, _ = policy_current(token.domain)
    try:
        registered = proposal_from(document, call_claim(token, data))
    except ClaimRefused as exc:
        raise _registry_refusal(exc) from None
    verb = registered.verb
    check_scope(token, tool=data.tool, verb=verb, session_id=data.session_id)
    # Read over the network before the transaction, never inside it.
    desk_read = desk_snapshot_take(
        domain=token.domain,
        tool=data.tool,
        verb=verb,
        target_ids=list(registered.target_ids),
        params=data.params,
        claim=data.pre_action_state,
    )
    try:
        with transaction.atomic():
            claimed = idempotency_claim(agent_id=token.agent_id, key=key, fingerprint=fingerprint)
            if claimed.claim is Claim.IN_FLIGHT:
                return Proposed(claimed.claim)
            # Before any stored answer: a replayed "allowed" must not reach an agent under a kill.
            admission_check(token.domain)
            if claimed.claim is Claim.REPLAY and claimed.record is not None:
                record = claimed.record
                return Proposed(claimed.claim, record.response_status, _replayed(token, record))
            if claimed.claim is not Claim.NEW:
                return Proposed(claimed.claim)
            action = _record_proposal(token, data, desk_read)
            body = action_verdict(action)
            idempotency_complete(claimed=claimed, status=201, body=body)
    except Killed as killed:
        record_refusal(
            token,
            "action.refused_killed",
            f"{data.tool}:{verb} refused: kill switch {killed.switch.scope} is engaged",
            {"tool": data.tool, "verb": verb, "session": data.session_id},
        )
        raise
    except Quarantined as quarantined:
        record_refusal(
            token,
            "action.refused_quarantined",
            f"{data.tool}:{verb} refused: agent {quarantined.agent.name} is quarantined",
            {"tool": data.tool, "verb": verb, "session": data.session_id},
        )
        raise
    return Proposed(Claim.NEW, 201, body, action)


def _replayed(token: AgentToken, record: Any) -> Any:
    """A replayed proposal's answer: the stored one, with the action's verdict as it is now.
    A stored "go ahead" may since have been cancelled, decided or have lapsed."""
    body = record.response_body
    action_id = body.get("id") if isinstance(body, dict) else None
    if record.response_status != 201 or not action_id:
        return body
    action = Action.objects.select_related("domain").filter(pk=action_id, agent=token.agent_id)
    found = action.first()
    return action_verdict(found, check_kill=True) if found is not None else body


def _record_proposal(
    token: AgentToken, data: ProposalData, desk_read: DeskRead | None = None
) -> Action:
    # One proposal at a time per agent, so rate rules count exactly.
    agent = Agent.objects.select_for_update().get(pk=token.agent_id)
    agent_admission_check(agent)  # read after the lock: a quarantine meanwhile is seen
    session = session_of(agent, token, data.session_id)
    if data.step_index is not None and not session.steps.filter(index=data.step_index).exists():
        raise Refused(
            409,
            "Unknown reasoning step",
            f"session {data.session_id} has no step {data.step_index}; post it first",
            field="step_index",
        )
    proposal, verdict, _ = _decide(token, agent, data)
    if not token_allows(token, tool=proposal.tool, verb=proposal.verb):
        # The registry changed between the scope check and now.
        raise Refused(
            409,
            "Policy changed",
            f"{proposal.tool} is now registered as "
            f"{proposal.verb}, outside this token's scopes; propose again",
        )
    action = proposed_action(token, agent, session.pk, data, proposal, verdict, desk_read)
    action.session = session
    status = action.status
    if status == S.ESCALATED:
        escalation_raise_without_undo(action)
        escalation_open(action)
    action.save(force_insert=True)
    if status == S.ESCALATED:
        escalation_opened(action)
    audit_record(
        actor=agent_actor(token), **proposal_entry(action, data, proposal, desk_read).fields()
    )
    if verdict.quarantine:
        agent_quarantine(
            agent_name=agent.name,
            actor=Actor.system(FLAPPING_RULE),
            reason=f"repeated {data.tool} on targets it had rolled back",
        )
    return action


def proposed_action(
    token: AgentToken,
    agent: Agent,
    session_id: int,
    data: ProposalData,
    proposal: Proposal,
    verdict: Verdict,
    desk_read: DeskRead | None,
) -> Action:
    """The action a proposal records, with its verdict (not saved)."""
    status = STATUS_OF_OUTCOME[verdict.outcome]
    return Action(
        agent=agent,
        token=token,
        domain=token.domain,
        session_id=session_id,
        step_index=data.step_index,
        tool=data.tool,
        verb=proposal.verb,
        params=data.params,
        target_ids=list(proposal.target_ids),
        amount=proposal.amount,
        currency=proposal.currency,
        blast_records=proposal.blast_records,
        blast_population=proposal.blast_population,
        pre_action_state=data.pre_action_state,
        desk_snapshot=desk_read.snapshot if desk_read else None,
        snapshot_differs=bool(desk_read and desk_read.differences),
        compensation=data.compensation,
        status=status,
        rule=verdict.rule,
        reason=verdict.reason,
        policy_version=verdict.version,
        tier=verdict.tier,
        run_by=run_deadline() if status == S.ALLOWED else None,
    )


def proposal_entry(
    action: Action, data: ProposalData, proposal: Proposal, desk_read: DeskRead | None
) -> Entry:
    """The audit event that records a proposal and its verdict."""
    return action_entry(
        action=action,
        event=f"action.{action.status}",
        summary=f"{data.tool}:{proposal.verb} {action.status} by rule {action.rule} "
        f"(policy v{action.policy_version}): {action.reason}",
        data={
            "session": data.session_id,
            "tool": data.tool,
            "verb": proposal.verb,
            "registered": proposal.registered,
            "rule": action.rule,
            "policy_version": action.policy_version,
            "tier": action.tier,
            **(desk_read.audit_data() if desk_read else {}),
        },
    )


def session_of(agent: Agent, token: AgentToken, session_id: str) -> AgentSession:
    # A session belongs to its agent; its domain is the one it started in.
    session, _ = AgentSession.objects.get_or_create(
        agent=agent, external_id=session_id, defaults={"domain": token.domain}
    )
    return session


PUBLIC_STATUS = {S.ESCALATED: "pending"}


def past_run_by(action: Action) -> bool:
    """Whether the yes that lets `action` run has lapsed (APPROVAL_TTL): it may not start now.
    A yes recorded without a deadline lapses APPROVAL_TTL after it was given."""
    deadline = action.run_by
    if deadline is None:
        given = action.decided_at or action.created_at
        if given is None:
            return False
        deadline = given + timedelta(seconds=settings.APPROVAL_TTL)
    return timezone.now() >= deadline


def action_verdict(action: Action, *, check_kill: bool = False) -> dict[str, Any]:
    """The desk's answer about an action, as agents see it. With `check_kill`, it also says
    whether a kill switch over its domain is engaged (then nothing may run)."""
    switch = KillSwitch.objects.engaged_over(action.domain.slug) if check_kill else None
    return {
        "id": str(action.pk),
        "status": PUBLIC_STATUS.get(S(action.status), action.status),
        "may_execute": action.status in EXECUTABLE and switch is None and not past_run_by(action),
        "run_by": action.run_by.isoformat() if action.run_by else None,
        "kill_switch": switch_info(switch) if switch else None,
        "rule": action.rule,
        "reason": action.reason,
        "policy_version": action.policy_version,
        "tier": action.tier,
        "expires_at": action.expires_at.isoformat() if action.expires_at else None,
        "params": effective_params(action),
        "modified": action.modified_params is not None,
        "decided_by": action.decided_by or None,
        "decision_reason": action.decision_reason,
    }
