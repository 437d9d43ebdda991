from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from approvals.agents import access_changed, token_revoke
from approvals.audit import Actor, audit_record
from approvals.core import Refused
from approvals.killswitches.effects import QUARANTINE_ACTOR, cancel_unrun, duration_text
from approvals.models import (
    EXECUTABLE,
    Action,
    Agent,
    AgentToken,
)

S = Action.Status


def agent_quarantine(*, agent_name: str, actor: Actor, reason: str) -> tuple[int, int]:
    """Stop one agent as a kill switch would stop a domain: revoke its tokens, cancel what it
    was allowed or approved to do and has not run, and cancel its open escalations.
    Returns (tokens revoked, actions cancelled)."""
    reason = _reason(reason, "quarantine")
    with transaction.atomic():
        agent = _locked_agent(agent_name)
        live_tokens = AgentToken.objects.filter(agent=agent, revoked_at=None)
        prefixes = list(live_tokens.values_list("prefix", flat=True))
        for prefix in prefixes:
            token_revoke(prefix=prefix, actor=actor)
        cancelled = 0
        for action in (
            Action.objects.select_for_update(of=("self",))
            .select_related("domain")
            .filter(agent=agent, status__in=[*EXECUTABLE, S.ESCALATED])
            .order_by("pk")
        ):
            cancel_unrun(
                action,
                actor=actor,
                by=QUARANTINE_ACTOR,
                reason=f"agent {agent.name} quarantined: {reason}",
            )
            cancelled += 1
        revoked = len(prefixes)
        agent.quarantined_at, agent.quarantine_reason = timezone.now(), reason
        agent.save(update_fields=["quarantined_at", "quarantine_reason"])
        audit_record(
            actor=actor,
            action="agent.quarantined",
            object_type="agent",
            object_id=agent.pk,
            summary=f"Agent {agent.name} quarantined: {reason} ({revoked} tokens revoked, "
            f"{cancelled} actions cancelled)",
            data={"tokens_revoked": revoked, "actions_cancelled": cancelled},
        )
    transaction.on_commit(access_changed, robust=True)  # its kept tokens too
    return revoked, cancelled


def agent_release(*, agent_name: str, actor: Actor, reason: str) -> Agent:
    """End an agent's quarantine. Its revoked tokens stay revoked: it needs new ones."""
    reason = _reason(reason, "release")
    with transaction.atomic():
        agent = _locked_agent(agent_name)
        if agent.quarantined_at is None:
            raise Refused(409, "Not quarantined", f"agent {agent.name} is not quarantined")
        since, why = agent.quarantined_at, agent.quarantine_reason
        held = max(timedelta(0), timezone.now() - since)
        agent.quarantined_at, agent.quarantine_reason = None, ""
        agent.save(update_fields=["quarantined_at", "quarantine_reason"])
        audit_record(
            actor=actor,
            action="agent.released",
            object_type="agent",
            object_id=agent.pk,
            summary=f"Agent {agent.name} released from quarantine after {duration_text(held)}: "
            f"{reason}",
            data={
                "reason": reason,
                "quarantined_at": since.isoformat(),
                "quarantine_reason": why,
                "quarantined_seconds": int(held.total_seconds()),
            },
        )
    return agent


def _reason(reason: str, verb: str) -> str:
    reason = reason.strip()
    if not reason:
        raise Refused(422, "Reason required", f"say why you {verb} it", field="reason")
    return reason


def _locked_agent(name: str) -> Agent:
    """The agent's row, locked until the transaction ends (quarantines take turns)."""
    agent = Agent.objects.select_for_update().filter(name=name).first()
    if agent is None:
        raise Refused(404, "No such agent", f"no agent {name!r}")
    return agent
