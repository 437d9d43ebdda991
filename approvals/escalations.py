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
from django.db import transaction
from django.utils import timezone

from approvals import live
from approvals.audit import Actor, audit_action_event
from approvals.connectors import compensation_connected
from approvals.errors import Refused
from approvals.killswitches import engaged_over, killed_domain_ids, switch_held
from approvals.models import Action, Approval, Tier
from approvals.notifications import notify
from approvals.policy import CallClaim, ClaimRefused, policy_current, policy_decide
from approvals.roles import perm
from approvals.tokens import token_allows

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
        TierSpec(t.level, t.approvals_needed, t.decide_permission, t.senior_permission,
                 t.sla_seconds)
        for t in rows
    )  # fmt: skip
    return configured or DEFAULT_TIERS


def _tier(tiers: tuple[TierSpec, ...], level: int) -> TierSpec:
    # A policy may name a tier the domain does not have: the nearest one takes it.
    return min(tiers, key=lambda t: (abs(t.level - level), -t.level))


def _from_tier(tiers: tuple[TierSpec, ...], level: int) -> tuple[TierSpec, ...]:
    return tuple(t for t in tiers if t.level >= level)


def escalation_open(action: Action, *, now: datetime | None = None) -> None:
    """Set up a new escalation's tier and timers; call in the transaction that creates it."""
    now = now or timezone.now()
    tiers = tiers_of(action.domain_id)
    tier = _tier(tiers, action.tier or 1)
    action.tier = tier.level
    action.sla_due_at = now + timedelta(seconds=tier.sla_seconds)
    action.expires_at = now + timedelta(
        seconds=sum(t.sla_seconds for t in _from_tier(tiers, tier.level))
    )
    action.timer_id = uuid.uuid4().hex


def escalation_opened(action: Action) -> None:
    """After the action row is written: schedule its timer, tell the open queues, and notify
    the domain's webhooks of anything above tier 1."""
    _schedule_timer(action)
    live.escalation_changed(action.pk)
    if (action.tier or 1) >= 2:
        notify(action=action, event="escalation.opened")


def _schedule_timer(action: Action) -> None:
    from approvals.tasks import escalation_timer_task

    assert action.sla_due_at is not None
    action_id, timer_id, due = str(action.pk), action.timer_id, action.sla_due_at
    # A broker hiccup does not fail the committed change (the task class logs it); the
    # sweep covers a lost timer.
    escalation_timer_task.apply_async_on_commit((action_id, timer_id), eta=due)


def may_decide(user: Any, action: Action) -> bool:
    """Whether `user` may take part in deciding `action` at its current tier."""
    if action.tier is None:
        return False
    tier = _tier(tiers_of(action.domain_id), action.tier)
    return user.has_perm(perm(tier.decide_permission))


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
        raise Refused(422, "Invalid params", "modified params must be a JSON object",
                      field="params")  # fmt: skip
    with transaction.atomic():
        # The switches' shared lock first, as a proposal takes it (the same order, so no
        # deadlock with an engage): a decision cannot commit after an engage and escape it.
        domain_slug = Action.objects.filter(pk=action_id).values_list("domain__slug", flat=True)
        switch = switch_held(domain_slug.get())
        action = (
            Action.objects.select_for_update(of=("self",))
            .select_related("agent", "domain")
            .get(pk=action_id)
        )
        if action.status != S.ESCALATED:
            raise AlreadyDecided(action)
        if switch is not None:
            raise Refused(
                423, "Frozen",
                f"the {switch.scope} kill switch is engaged: escalations under it wait, "
                "undecidable, until it is released",
            )  # fmt: skip
        if not params_seen:
            raise Refused(422, "params_seen required", "send the fingerprint of the params you "
                          "reviewed (params_seen)", field="params_seen")  # fmt: skip
        if params_seen != params_fingerprint(effective_params(action)):
            raise Refused(
                409, "Params changed",
                "someone modified the params since you opened this item; review them again",
            )  # fmt: skip
        level = action.tier or 1
        tier = _tier(tiers_of(action.domain_id), level)
        if not user.has_perm(perm(tier.decide_permission)):
            raise Refused(
                403, "Not your tier", f"deciding {tier.describe()} needs {tier.decide_permission}"
            )
        actor = Actor.user(user)
        if verdict == "reject":
            return Decision(_finish(action, S.REJECTED, actor, reason), final=True)
        if action.agent.owner_id == user.pk:
            raise Refused(
                403, "Owner may not approve",
                f"you own agent {action.agent.name}; someone else must approve its actions",
            )  # fmt: skip
        if verdict == "modify":
            assert params is not None
            return _modify(action, params, actor, reason)
        if action.modified_by and action.modified_by == actor.name:
            raise Refused(
                403, "You modified it",
                "you modified these params; another approver must approve the modified version",
            )  # fmt: skip
        if Approval.objects.filter(action=action, tier=level, user=user).exists():
            raise Refused(
                409, "Already approved by you",
                f"you already approved this at tier {action.tier}; "
                "the next approval must come from someone else",
            )  # fmt: skip
        senior = bool(tier.senior_permission) and user.has_perm(perm(tier.senior_permission))
        Approval.objects.create(
            action=action, tier=level, user=user, senior=senior,
            modified_params=action.modified_params, reason=reason,
        )  # fmt: skip
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
            live.escalation_changed(action.pk)
            return Decision(action, final=False, waiting_for=missing)
        status = S.MODIFIED if action.modified_params is not None else S.APPROVED
        return Decision(_finish(action, status, actor, reason), final=True)


def _modify(action: Action, params: dict[str, Any], actor: Actor, reason: str) -> Decision:
    """Judge modified params as a new proposal of the same agent, token and tool."""
    before = effective_params(action)
    if params == before:
        raise Refused(422, "Nothing modified", "the params are unchanged; approve instead",
                      field="params")  # fmt: skip
    claim = _claim_of(action, params)
    try:
        proposal, verdict, _ = policy_decide(action.domain, action.agent, claim)
    except ClaimRefused as exc:
        raise Refused(422, "Contradicts the tool registry", exc.detail, field=exc.field) from None
    snapshot = action.pre_action_state is not None or action.desk_snapshot is not None
    if snapshot and sorted(proposal.target_ids) != sorted(action.target_ids):
        raise Refused(
            422, "Targets changed",
            "the modified params act on other targets than the snapshot taken for this "
            "proposal; reject it and let the agent propose those targets itself",
            field="params",
        )  # fmt: skip
    if not token_allows(action.token, tool=proposal.tool, verb=proposal.verb):
        raise Refused(403, "Out of the agent's scope", f"the agent's token may not "
                      f"{proposal.verb} with {proposal.tool}")  # fmt: skip
    if verdict.outcome == "deny":
        raise Refused(
            422, "Denied by the policy",
            f"rule {verdict.rule} denies the modified params: {verdict.reason}", field="params",
        )  # fmt: skip
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
        _schedule_timer(action)
    audit_action_event(
        actor=actor,
        action=action,
        event="escalation.modified",
        summary=f"{action.tool} params modified: {params_diff_text(before, params)}; "
        f"{verdict.outcome} by {verdict.rule} at tier {action.tier}, waiting for another approver"
        + (f"; {set_aside} earlier approval(s) set aside" if set_aside else ""),
        data={"before": before, "after": params, "reason": reason, "rule": verdict.rule,
              "outcome": verdict.outcome, "tier": action.tier, "approvals_set_aside": set_aside,
              "amount": None if proposal.amount is None else f"{proposal.amount:f}",
              "targets": len(proposal.target_ids)},
    )  # fmt: skip
    live.escalation_changed(action.pk)
    tier = _tier(tiers_of(action.domain_id), action.tier or 1)
    return Decision(action, final=False,
                    waiting_for=f"{tier.describe()}, other than {actor.name}")  # fmt: skip


def _claim_of(action: Action, params: dict[str, Any]) -> CallClaim:
    """The action's proposal again, with other params. For a registered tool the registry works
    out the amount and targets from them again; otherwise the agent's word stands."""
    document, _ = policy_current(action.domain)
    registered = document.tool(action.tool) is not None
    return CallClaim(
        agent=action.agent.name, tool=action.tool, verb=action.verb, params=params,
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
    )  # fmt: skip


def effective_params(action: Action) -> dict[str, Any]:
    """The params the agent will run if approved: an operator's, if modified."""
    return action.modified_params if action.modified_params is not None else action.params


def params_fingerprint(params: dict[str, Any]) -> str:
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


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


def run_deadline(now: datetime | None = None) -> datetime:
    """Until when a yes given now lets an action start (APPROVAL_TTL)."""
    return (now or timezone.now()) + timedelta(seconds=settings.APPROVAL_TTL)


def _finish(action: Action, status: str, actor: Actor, reason: str) -> Action:
    if status in (S.APPROVED, S.MODIFIED):
        action.run_by = run_deadline()
        action.save(update_fields=["run_by"])
    action.settle(status, by=actor.name, reason=reason)
    audit_action_event(
        actor=actor,
        action=action,
        event=f"action.{status}",
        summary=f"{action.tool}:{action.verb} {status} at tier {action.tier}"
        + (f": {reason}" if reason else ""),
        data={"tier": action.tier, "reason": reason, "params": action.modified_params},
    )
    live.escalation_changed(action.pk)
    return action


def escalation_resume(action: Action, *, extra: timedelta) -> None:
    """A frozen escalation thaws: its SLA and expiry move on by the time it was frozen, and it
    gets a new timer (the old one, if still queued, is stale)."""
    if action.sla_due_at is not None:
        action.sla_due_at += extra
    if action.expires_at is not None:
        action.expires_at += extra
    action.timer_id = uuid.uuid4().hex
    action.save(update_fields=["sla_due_at", "expires_at", "timer_id", "updated_at"])
    _schedule_timer(action)
    live.escalation_changed(action.pk)


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
            _schedule_timer(action)
            return "early"
        if engaged_over(action.domain.slug) is not None:
            return "frozen"  # the sweep takes it up again once the switch is released
        tiers = tiers_of(action.domain_id)
        higher = [t for t in tiers if t.level > (action.tier or 0)]
        system = Actor.system("escalation-timer")
        if not higher:
            action.settle(
                S.EXPIRED, by=system.name, at=now,
                reason=f"no decision within the SLA of every tier up to {action.tier}",
            )  # fmt: skip
            audit_action_event(
                actor=system,
                action=action,
                event="action.expired",
                summary=f"{action.tool}:{action.verb} expired undecided at tier {action.tier}; "
                "the agent is told it is denied",
                data={"tier": action.tier},
            )
            live.escalation_changed(action.pk)
            notify(action=action, event="escalation.expired")
            return "expired"
        before, nxt = action.tier, higher[0]
        action.tier = nxt.level
        action.sla_due_at = now + timedelta(seconds=nxt.sla_seconds)
        remaining = sum(t.sla_seconds for t in _from_tier(tiers, nxt.level))
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
        _schedule_timer(action)
        live.escalation_changed(action.pk)
        notify(action=action, event="escalation.sla_breached")
        return "escalated"


def escalations_sweep(*, now: datetime | None = None) -> int:
    """Fire every timer that is overdue: the backstop for timer tasks that were lost."""
    now = now or timezone.now()
    killed = killed_domain_ids()
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
            "escalated", "expired",
        ):  # fmt: skip
            fired += 1
    return fired


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
