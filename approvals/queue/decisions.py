from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from approvals import live
from approvals.agents import token_allows
from approvals.audit import Actor, audit_action_event
from approvals.core import Refused, perm
from approvals.models import Action, Approval, KillSwitch
from approvals.policy import CallClaim, ClaimRefused, policy_current, policy_decide
from approvals.queue.escalations import (
    TierSpec,
    effective_params,
    escalation_finish,
    escalation_open,
    params_diff_text,
    params_fingerprint,
    schedule_timer,
    tier_at,
    tiers_of,
)
from approvals.rollbacks import compensation_connected

S = Action.Status


class AlreadyDecided(Refused):
    def __init__(self, action: Action) -> None:
        when = (
            timezone.localtime(action.decided_at).strftime("%H:%M:%S") if action.decided_at else ""
        )
        who = f" by {action.decided_by}" if action.decided_by else ""
        super().__init__(
            409,
            "Already decided",
            f"this action was already {action.get_status_display().lower()}{who}"
            + (f" at {when}" if when else ""),
        )
        self.action = action


@dataclass(frozen=True)
class Decision:
    action: Action
    final: bool  # False: an approval was recorded, and the tier needs more
    waiting_for: str = ""


def escalation_decide(
    *,
    action_id: Any,
    user: Any,
    verdict: str,
    reason: str = "",
    params_seen: str,
    params: dict[str, Any] | None = None,
) -> Decision:
    """Approve, reject or modify an escalated action, as `user`.

    Exactly one decision counts: the row is locked, and a second decider finds it decided and
    is told by whom. Four-eyes: approvals at a tier come from different people, none of them the
    agent's owner, and a tier with a senior permission needs one approver who holds it. A
    decision is of the params the decider saw (`params_seen`, their fingerprint): if someone
    modified them meanwhile, the decider is asked to look again.

    A modification is a new proposal: the token's scopes and the policy judge the new params
    (a deny refuses it, naming the rule), the amount and targets are worked out again, the
    approvals given before are set aside, and it waits at the tier the policy now asks (never
    lower) for someone other than the person who modified it.
    """
    if verdict not in ("approve", "reject", "modify"):
        raise Refused(400, "Unknown decision", f"decide approve, reject or modify, not {verdict!r}")
    reason = reason.strip()
    if verdict == "reject" and not reason:
        raise Refused(422, "Reason required", "say why you reject it", field="reason")
    if verdict == "modify" and not isinstance(params, dict):
        raise Refused(
            422, "Invalid params", "modified params must be a JSON object", field="params"
        )
    with transaction.atomic():
        # The switches' shared lock first, as a proposal takes it (the same order, so no
        # deadlock with an engage): a decision cannot commit after an engage and escape it.
        domain_slug = Action.objects.filter(pk=action_id).values_list("domain__slug", flat=True)
        switch = KillSwitch.objects.held_over(domain_slug.get())
        action = (
            Action.objects.select_for_update(of=("self",))
            .select_related("agent", "domain")
            .get(pk=action_id)
        )
        if action.status != S.ESCALATED:
            raise AlreadyDecided(action)
        if switch is not None:
            raise Refused(
                423,
                "Frozen",
                f"the {switch.scope} kill switch is engaged: escalations under it wait, "
                "undecidable, until it is released",
            )
        if not params_seen:
            raise Refused(
                422,
                "params_seen required",
                "send the fingerprint of the params you reviewed (params_seen)",
                field="params_seen",
            )
        if params_seen != params_fingerprint(effective_params(action)):
            raise Refused(
                409,
                "Params changed",
                "someone modified the params since you opened this item; review them again",
            )
        level = action.tier or 1
        tier = tier_at(tiers_of(action.domain_id), level)
        if not user.has_perm(perm(tier.decide_permission)):
            raise Refused(
                403, "Not your tier", f"deciding {tier.describe()} needs {tier.decide_permission}"
            )
        actor = Actor.user(user)
        if verdict == "reject":
            return Decision(escalation_finish(action, S.REJECTED, actor, reason), final=True)
        if action.agent.owner_id == user.pk:
            raise Refused(
                403,
                "Owner may not approve",
                f"you own agent {action.agent.name}; someone else must approve its actions",
            )
        if verdict == "modify":
            assert params is not None
            return _modify(action, params, actor, reason)
        if action.modified_by and action.modified_by == actor.name:
            raise Refused(
                403,
                "You modified it",
                "you modified these params; another approver must approve the modified version",
            )
        if Approval.objects.filter(action=action, tier=level, user=user).exists():
            raise Refused(
                409,
                "Already approved by you",
                f"you already approved this at tier {action.tier}; "
                "the next approval must come from someone else",
            )
        senior = bool(tier.senior_permission) and user.has_perm(perm(tier.senior_permission))
        Approval.objects.create(
            action=action,
            tier=level,
            user=user,
            senior=senior,
            modified_params=action.modified_params,
            reason=reason,
        )
        approvals = list(Approval.objects.filter(action=action, tier=level))
        missing = _missing(tier, approvals)
        if missing:
            audit_action_event(
                actor=actor,
                action=action,
                event="escalation.approval_recorded",
                summary=f"Approval {len(approvals)} of {tier.approvals_needed} at tier "
                f"{action.tier}; waiting for {missing}",
                data={"tier": action.tier, "senior": senior, "reason": reason},
            )
            live.escalation_changed(action.pk, agent_id=action.agent_id)
            return Decision(action, final=False, waiting_for=missing)
        status = S.MODIFIED if action.modified_params is not None else S.APPROVED
        return Decision(escalation_finish(action, status, actor, reason), final=True)


def _modify(action: Action, params: dict[str, Any], actor: Actor, reason: str) -> Decision:
    """Judge modified params as a new proposal of the same agent, token and tool."""
    before = effective_params(action)
    if params == before:
        raise Refused(
            422, "Nothing modified", "the params are unchanged; approve instead", field="params"
        )
    claim = _claim_of(action, params)
    try:
        proposal, verdict, _ = policy_decide(action.domain, action.agent, claim)
    except ClaimRefused as exc:
        raise Refused(422, "Contradicts the tool registry", exc.detail, field=exc.field) from None
    snapshot = action.pre_action_state is not None or action.desk_snapshot is not None
    if snapshot and sorted(proposal.target_ids) != sorted(action.target_ids):
        raise Refused(
            422,
            "Targets changed",
            "the modified params act on other targets than the snapshot taken for this "
            "proposal; reject it and let the agent propose those targets itself",
            field="params",
        )
    if not token_allows(action.token, tool=proposal.tool, verb=proposal.verb):
        raise Refused(
            403,
            "Out of the agent's scope",
            f"the agent's token may not {proposal.verb} with {proposal.tool}",
        )
    if verdict.outcome == "deny":
        raise Refused(
            422,
            "Denied by the policy",
            f"rule {verdict.rule} denies the modified params: {verdict.reason}",
            field="params",
        )
    level = action.tier or 1
    action.modified_params, action.modified_by = params, actor.name
    action.target_ids = list(proposal.target_ids)
    action.amount, action.currency = proposal.amount, proposal.currency
    action.blast_records = proposal.blast_records
    action.blast_population = proposal.blast_population
    action.rule, action.reason = verdict.rule, verdict.reason
    raised = (verdict.tier or 1) > level
    if raised:  # the new params need more: the wait starts again at that tier
        action.tier = verdict.tier
        escalation_open(action)
    action.save()
    # Approvals given so far were of other params: they no longer count.
    set_aside, _ = Approval.objects.filter(action=action).delete()
    if raised:
        schedule_timer(action)
    audit_action_event(
        actor=actor,
        action=action,
        event="escalation.modified",
        summary=f"{action.tool} params modified: {params_diff_text(before, params)}; "
        f"{verdict.outcome} by {verdict.rule} at tier {action.tier}, waiting for another approver"
        + (f"; {set_aside} earlier approval(s) set aside" if set_aside else ""),
        data={
            "before": before,
            "after": params,
            "reason": reason,
            "rule": verdict.rule,
            "outcome": verdict.outcome,
            "tier": action.tier,
            "approvals_set_aside": set_aside,
            "amount": None if proposal.amount is None else f"{proposal.amount:f}",
            "targets": len(proposal.target_ids),
        },
    )
    live.escalation_changed(action.pk, agent_id=action.agent_id)
    tier = tier_at(tiers_of(action.domain_id), action.tier or 1)
    return Decision(action, final=False, waiting_for=f"{tier.describe()}, other than {actor.name}")


def _claim_of(action: Action, params: dict[str, Any]) -> CallClaim:
    """The action's proposal again, with other params. For a registered tool the registry works
    out the amount and targets from them again; otherwise the agent's word stands."""
    document, _ = policy_current(action.domain)
    registered = document.tool(action.tool) is not None
    return CallClaim(
        agent=action.agent.name,
        tool=action.tool,
        verb=action.verb,
        params=params,
        amount=None if registered else action.amount,
        currency="" if registered else action.currency,
        blast_records=None if registered else action.blast_records,
        blast_population=action.blast_population,
        target_ids=() if registered else tuple(action.target_ids),
        has_snapshot=action.pre_action_state is not None,
        compensation_tool=(action.compensation or {}).get("tool"),
        compensation_connected=not registered
        and action.compensation is None
        and action.pre_action_state is None
        and compensation_connected(action.domain, action.tool),
    )


def _missing(tier: TierSpec, approvals: list[Approval]) -> str:
    if len(approvals) < tier.approvals_needed:
        more = tier.approvals_needed - len(approvals)
        need = f"{more} more approver{'s' if more > 1 else ''}"
        if tier.senior_permission and not any(a.senior for a in approvals):
            need += f", one with {tier.senior_permission}"
        return need
    if tier.senior_permission and not any(a.senior for a in approvals):
        return f"an approver with {tier.senior_permission}"
    return ""
