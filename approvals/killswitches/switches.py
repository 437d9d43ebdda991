"""Kill switches: one per domain and one global. While one is engaged, no action under it is
admitted, its open escalations are frozen, and its approved but unexecuted actions are cancelled.

Exactness: every proposal holds a shared lock on its domain's switch and the global one for the
whole of its transaction, and reads the switches after taking them; an engage takes its switch's
lock exclusively. So an engage waits for the proposals already in flight, and no proposal that
commits after the engage has committed was admitted. (On SQLite, transactions take turns anyway.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.utils import timezone

from approvals import live
from approvals.audit import Actor, audit_record
from approvals.core import Refused
from approvals.killswitches.acks import links_awaited
from approvals.models import Domain, KillSwitch, KillSwitchChange
from incidentdesk.celery import enqueue_on_commit

# Task names stay as they were when every task lived in approvals/tasks.py: messages
# already queued (timers waiting for their time, retries) carry them.
EFFECTS_TASK = "approvals.tasks.killswitch_effects_task"


GLOBAL = KillSwitch.GLOBAL


KILL_SWITCH_ACTOR = "kill-switch"


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


def admission_check(domain: Domain) -> None:
    """Refuse (423) an action in `domain` if a switch over it is engaged. Call inside the
    proposal's transaction: the shared locks it takes are held until that commits."""
    switch = KillSwitch.objects.held_over(domain.slug)
    if switch is not None:
        raise Killed(switch)


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

    reason = reason.strip()
    if not reason:
        raise Refused(422, "Reason required", "say why you engage or release it", field="reason")
    with transaction.atomic():
        KillSwitch.objects.lock(
            [scope], shared=False
        )  # waits for the proposals in flight under this switch
        switch = _switch(scope)
        if switch.engaged == engaged:
            state = "engaged" if engaged else "released"
            raise Refused(
                409,
                f"Already {state}",
                f"the {scope} kill switch is already {state} (by {switch.changed_by or 'nobody'})",
            )
        switch.engaged, switch.reason = engaged, reason
        switch.changed_by, switch.changed_at = actor.name, timezone.now()
        switch.save()
        sockets = links_awaited(scope) if engaged else []
        awaited = [link_id for link_id, _ in sockets]
        change = KillSwitchChange.objects.create(
            switch=switch,
            engaged=engaged,
            actor=actor.name,
            reason=reason,
            awaited=awaited,
            awaited_agents=len({agent_id for _, agent_id in sockets}),
        )
        if engaged and not change.awaited:  # no socket open: nothing to wait for
            change.contained_at = change.created_at
            change.save(update_fields=["contained_at"])
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
        enqueue_on_commit(EFFECTS_TASK, change.pk)
    return change


def killswitch_state(domain_slugs: Iterable[str] | None = None) -> dict[str, Any]:
    """Every switch (or those over the given domains), with the version agents compare."""
    switches = KillSwitch.objects.all()
    if domain_slugs is not None:
        switches = switches.filter(scope__in=[*domain_slugs, GLOBAL])
    version = KillSwitchChange.objects.current_version()
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
        state.setdefault(
            scope,
            {"scope": scope, "engaged": False, "reason": "", "changed_by": "", "changed_at": None},
        )
    return {"version": version, "switches": state}


def engaged_switches() -> list[KillSwitch]:
    return list(KillSwitch.objects.filter(engaged=True).order_by("scope"))
