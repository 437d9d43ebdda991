"""Kill switches: one per domain and one global. While one is engaged, no action under it is
admitted, its open escalations are frozen, and its approved but unexecuted actions are cancelled.

Exactness: every proposal holds a shared lock on its domain's switch and the global one for the
whole of its transaction, and reads the switches after taking them; an engage takes its switch's
lock exclusively. So an engage waits for the proposals already in flight, and no proposal that
commits after the engage has committed was admitted. (On SQLite, transactions take turns anyway.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import Max, Q
from django.utils import timezone

from approvals import live
from approvals.audit import Actor, audit_action_event, audit_record
from approvals.errors import Refused
from approvals.models import Action, AgentSession, Domain, KillSwitch, KillSwitchChange

S = Action.Status
GLOBAL = KillSwitch.GLOBAL
KILL_SWITCH_ACTOR = "kill-switch"
# Not yet run: a person or the policy said yes, and no result has come back.
UNEXECUTED = (S.ALLOWED, S.APPROVED, S.MODIFIED)
# Older yeses that never reported a result are history, not work about to happen.
UNEXECUTED_WITHIN = timedelta(hours=24)


class Killed(Refused):
    """423: a kill switch over this domain is engaged."""

    def __init__(self, switch: KillSwitch) -> None:
        where = "everywhere" if switch.scope == GLOBAL else f"in {switch.scope}"
        super().__init__(
            423,
            "Kill switch engaged",
            f"the {switch.scope} kill switch is engaged: no agent action is admitted {where} "
            f"(engaged by {switch.changed_by}: {switch.reason})",
            extra={"kill_switch": switch_info(switch)},
        )
        self.switch = switch


def switch_info(switch: KillSwitch) -> dict[str, Any]:
    return {
        "scope": switch.scope,
        "engaged": switch.engaged,
        "reason": switch.reason,
        "changed_by": switch.changed_by,
        "changed_at": switch.changed_at.isoformat() if switch.changed_at else None,
    }


def _lock_key(scope: str) -> int:
    digest = hashlib.blake2b(f"kill-switch:{scope}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _lock(scopes: Iterable[str], *, shared: bool) -> None:
    if connection.vendor != "postgresql":
        return  # SQLite: write transactions begin IMMEDIATE and take turns
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    keys = [_lock_key(scope) for scope in scopes]
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join(f"{function}(%s)" for _ in keys), keys)


def engaged_over(domain_slug: str) -> KillSwitch | None:
    """The engaged switch over a domain (its own, or the global one), if any."""
    return (
        KillSwitch.objects.filter(scope__in=[domain_slug, GLOBAL], engaged=True)
        .order_by("-changed_at")
        .first()
    )


def admission_check(domain: Domain) -> None:
    """Refuse (423) an action in `domain` if a switch over it is engaged. Call inside the
    proposal's transaction: the shared locks it takes are held until that commits."""
    _lock([domain.slug, GLOBAL], shared=True)
    switch = engaged_over(domain.slug)
    if switch is not None:
        raise Killed(switch)


def killed_domain_ids() -> set[int] | None:
    """Domains under an engaged switch; None means all of them (the global switch)."""
    engaged = list(KillSwitch.objects.filter(engaged=True).values_list("scope", "domain_id"))
    if any(scope == GLOBAL for scope, _ in engaged):
        return None
    return {domain_id for _, domain_id in engaged if domain_id is not None}


def _switch(scope: str) -> KillSwitch:
    if scope == GLOBAL:
        switch, _ = KillSwitch.objects.select_for_update().get_or_create(scope=GLOBAL)
        return switch
    domain = Domain.objects.filter(slug=scope).first()
    if domain is None:
        known = ", ".join(Domain.objects.values_list("slug", flat=True)) or "none"
        raise Refused(404, "No such domain", f"no domain {scope!r}; domains: {known}, or global")
    switch, _ = KillSwitch.objects.select_for_update().get_or_create(
        scope=scope, defaults={"domain": domain}
    )
    return switch


def killswitch_set(*, scope: str, engaged: bool, actor: Actor, reason: str) -> KillSwitchChange:
    """Engage or release a switch. Its effects follow in a Celery task."""
    from approvals.tasks import killswitch_effects_task

    reason = reason.strip()
    if not reason:
        raise Refused(422, "Reason required", "say why you engage or release it", field="reason")
    with transaction.atomic():
        _lock([scope], shared=False)  # waits for the proposals in flight under this switch
        switch = _switch(scope)
        if switch.engaged == engaged:
            state = "engaged" if engaged else "released"
            raise Refused(409, f"Already {state}", f"the {scope} kill switch is already {state} "
                          f"(by {switch.changed_by or 'nobody'})")  # fmt: skip
        switch.engaged, switch.reason = engaged, reason
        switch.changed_by, switch.changed_at = actor.name, timezone.now()
        switch.save()
        change = KillSwitchChange.objects.create(
            switch=switch, engaged=engaged, actor=actor.name, reason=reason
        )
        # Registered first, so after commit the agents are told before anything else runs
        # (sealing the audit event, queueing the effects).
        live.killswitch_changed(change.pk, killswitch_state()["switches"])
        verb = "engaged" if engaged else "released"
        audit_record(
            actor=actor,
            action=f"killswitch.{verb}",
            domain="" if scope == GLOBAL else scope,
            object_type="kill_switch",
            object_id=scope,
            summary=f"Kill switch {scope} {verb}: {reason}",
            data={"version": change.pk},
        )
        killswitch_effects_task.delay_on_commit(change.pk)
    return change


def killswitch_effects(*, change_id: int) -> KillSwitchChange | None:
    """What follows an engage: cancel what was approved but not run, wake the agents waiting on
    frozen escalations, notify. Safe to run twice: the second run finds it done."""
    from approvals.notifications import notify_switch

    with transaction.atomic():
        change = (
            KillSwitchChange.objects.select_for_update()
            .select_related("switch")
            .filter(pk=change_id, effects_done_at=None)
            .first()
        )
        if change is None:
            return None
        if change.engaged:
            scope = _scope(change.switch)
            cancelled = 0
            recent = Q(updated_at__gte=timezone.now() - UNEXECUTED_WITHIN)
            for action in (
                Action.objects.select_for_update(of=("self",))
                .select_related("domain")
                .filter(scope, recent, status__in=UNEXECUTED)
            ):
                _cancel(
                    action, actor=Actor.system(KILL_SWITCH_ACTOR), by=KILL_SWITCH_ACTOR,
                    reason=f"kill switch {change.switch.scope} engaged: {change.reason}",
                    data={"kill_switch_version": change.pk},
                )  # fmt: skip
                cancelled += 1
            # Frozen, not decided: touched, so agents long-polling them are answered now.
            frozen = Action.objects.filter(scope, status=S.ESCALATED).update(
                updated_at=timezone.now()
            )
            summary = (
                f"cancelled {cancelled} approved but unexecuted actions; froze {frozen} escalations"
            )
        else:
            summary = _thaw(change)
        change.effects_done_at, change.effects_summary = timezone.now(), summary
        change.save(update_fields=["effects_done_at", "effects_summary"])
        notify_switch(change=change)
    return change


def _thaw(release: KillSwitchChange) -> str:
    """After a release: the escalations it froze get back the SLA time the freeze took, and
    their timers again (those still under another engaged switch stay frozen)."""
    from approvals.escalations import escalation_resume

    engage = (
        KillSwitchChange.objects.filter(switch=release.switch, engaged=True, id__lt=release.pk)
        .order_by("-id")
        .first()
    )
    if engage is None:
        return "released"
    frozen_for = release.created_at - engage.created_at
    scope = _scope(release.switch)
    still_killed = killed_domain_ids()
    if still_killed is None:
        return "released; everything is still frozen by the global switch"
    resumed = 0
    for action in (
        Action.objects.select_for_update(of=("self",))
        .filter(scope, status=S.ESCALATED)
        .exclude(domain_id__in=still_killed)
    ):
        escalation_resume(action, extra=frozen_for)
        resumed += 1
    return f"released; {resumed} escalations resumed with {int(frozen_for.total_seconds())} s added"


def killswitch_effects_pending(*, older_than: timedelta = timedelta(seconds=2)) -> list[int]:
    """Changes whose effects have not run (their task was lost, or was queued by a process
    with no worker): the sweep runs them."""
    cutoff = timezone.now() - older_than
    return list(
        KillSwitchChange.objects.filter(effects_done_at=None, created_at__lt=cutoff)
        .order_by("id")
        .values_list("id", flat=True)
    )


def _scope(switch: KillSwitch) -> Q:
    """The actions a switch is over."""
    return Q() if switch.scope == GLOBAL else Q(domain_id=switch.domain_id)


def _cancel(
    action: Action, *, actor: Actor, by: str, reason: str, data: dict[str, Any] | None = None
) -> None:
    action.settle(S.CANCELLED, by=by, reason=reason)
    audit_action_event(
        actor=actor,
        action=action,
        event="action.cancelled",
        summary=f"{action.tool}:{action.verb} cancelled before it ran: {reason}",
        data=data,
    )
    live.escalation_changed(action.pk)


def ran_during_kill(action: Action) -> bool:
    """Whether a result reported now for `action` comes from a call made under a kill."""
    cancelled_by_kill = action.status == S.CANCELLED and action.decided_by in (
        KILL_SWITCH_ACTOR, QUARANTINE_ACTOR,
    )  # fmt: skip
    return cancelled_by_kill or engaged_over(action.domain.slug) is not None


def flag_ran_during_kill(action: Action) -> None:
    action.ran_during_kill = True
    if action.session_id is not None:
        AgentSession.objects.filter(pk=action.session_id).update(ran_during_kill=True)


def killswitch_state(domain_slugs: Iterable[str] | None = None) -> dict[str, Any]:
    """Every switch (or those over the given domains), with the version agents compare."""
    switches = KillSwitch.objects.all()
    if domain_slugs is not None:
        switches = switches.filter(scope__in=[*domain_slugs, GLOBAL])
    version = KillSwitchChange.objects.aggregate(v=Max("id"))["v"] or 0
    state = {s.scope: switch_info(s) for s in switches}
    return state_for(version, state, domain_slugs)


def state_for(
    version: int, switches: dict[str, Any], domain_slugs: Iterable[str] | None
) -> dict[str, Any]:
    """The state an agent is sent: its domain's switch and the global one (released unless
    known otherwise)."""
    wanted = None if domain_slugs is None else {*domain_slugs, GLOBAL}
    state = {k: v for k, v in switches.items() if wanted is None or k in wanted}
    for scope in wanted or {GLOBAL}:
        state.setdefault(scope, {"scope": scope, "engaged": False, "reason": "",
                                 "changed_by": "", "changed_at": None})  # fmt: skip
    return {"version": version, "switches": state}


def engaged_switches() -> list[KillSwitch]:
    return list(KillSwitch.objects.filter(engaged=True).order_by("scope"))


QUARANTINE_ACTOR = "quarantine"


def agent_quarantine(*, agent_name: str, actor: Actor, reason: str) -> tuple[int, int]:
    """Stop one agent as a kill switch would stop a domain: revoke its tokens, cancel what it
    was allowed or approved to do and has not run, and cancel its open escalations.
    Returns (tokens revoked, actions cancelled)."""
    from approvals.models import Agent, AgentToken
    from approvals.tokens import token_revoke

    reason = reason.strip()
    if not reason:
        raise Refused(422, "Reason required", "say why you quarantine it", field="reason")
    with transaction.atomic():
        agent = Agent.objects.select_for_update().filter(name=agent_name).first()
        if agent is None:
            raise Refused(404, "No such agent", f"no agent {agent_name!r}")
        live_tokens = AgentToken.objects.filter(agent=agent, revoked_at=None)
        prefixes = list(live_tokens.values_list("prefix", flat=True))
        for prefix in prefixes:
            token_revoke(prefix=prefix, actor=actor)
        cancelled = 0
        for action in (
            Action.objects.select_for_update(of=("self",))
            .select_related("domain")
            .filter(agent=agent, status__in=[*UNEXECUTED, S.ESCALATED])
        ):
            _cancel(action, actor=actor, by=QUARANTINE_ACTOR,
                    reason=f"agent {agent.name} quarantined: {reason}")  # fmt: skip
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
    return revoked, cancelled
