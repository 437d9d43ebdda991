"""What a stop does: the effects of an engage or a release, and the quarantine of one agent.

An engage cancels every action under it that was allowed or approved but has not reported a
result, however old, and freezes its open escalations; a release thaws them. A quarantine stops
one agent as an engage stops a domain. Switches themselves, their locks and who is admitted live
in approvals/killswitches.py; the agent's quarantine state in approvals/tokens.py.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from approvals import live
from approvals.audit import Actor, audit_action_event
from approvals.killswitches.switches import (
    GLOBAL,
    KILL_SWITCH_ACTOR,
)
from approvals.models import (
    EXECUTABLE,
    Action,
    AgentSession,
    KillSwitch,
    KillSwitchChange,
)
from approvals.notifications import notify_switch
from approvals.queue import escalation_resume

S = Action.Status


def killswitch_effects(*, change_id: int) -> KillSwitchChange | None:
    """What follows an engage: cancel what was approved but not run, wake the agents waiting on
    frozen escalations, notify. Safe to run twice: the second run finds it done."""
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
            # Not a yes given after the engage: decisions take the switches' shared lock and
            # are refused while it is engaged, so such a yes came after a release (before
            # this task ran) and stands. Told apart by the version it was given under, not by
            # clocks: a yes given just before the engage is cancelled on any machine.
            before = Q(decided_version__lt=change.pk)
            for action in (
                Action.objects.select_for_update(of=("self",))
                .select_related("domain")
                .filter(scope, before, status__in=EXECUTABLE)
                .order_by("pk")
            ):
                cancel_unrun(
                    action,
                    actor=Actor.system(KILL_SWITCH_ACTOR),
                    by=KILL_SWITCH_ACTOR,
                    reason=f"kill switch {change.switch.scope} engaged: {change.reason}",
                    data={"kill_switch_version": change.pk},
                )
                cancelled += 1
            # Frozen, not decided: touched, so agents long-polling them are answered now.
            frozen = Action.objects.filter(scope, status=S.ESCALATED).update(
                updated_at=timezone.now()
            )
            # Started and not reported: they cannot be called back, and may have run.
            running = Action.objects.filter(scope, status=S.EXECUTING).count()
            summary = (
                f"cancelled {cancelled} approved but unexecuted actions; froze {frozen} escalations"
                + (
                    f"; {running} actions were already running, their outcome unknown until "
                    "reported or reconciled"
                    if running
                    else ""
                )
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
    engage = (
        KillSwitchChange.objects.filter(switch=release.switch, engaged=True, id__lt=release.pk)
        .order_by("-id")
        .first()
    )
    if engage is None:
        return "released"
    frozen_for = release.created_at - engage.created_at
    scope = _scope(release.switch)
    still_killed = KillSwitch.objects.killed_domain_ids()
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


def cancel_unrun(
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
    live.escalation_changed(action.pk, agent_id=action.agent_id)


def ran_during_kill(action: Action) -> bool:
    """Whether a result reported now for `action` comes from a call made under a kill. A call
    that said it started before the switch was engaged was already running: the engage
    counted it, and its result is not a run under the kill."""
    cancelled_by_kill = action.status == S.CANCELLED and action.decided_by in (
        KILL_SWITCH_ACTOR,
        QUARANTINE_ACTOR,
    )
    if cancelled_by_kill:
        return True
    switch = KillSwitch.objects.engaged_over(action.domain.slug)
    if switch is None:
        return False
    started = action.executing_at
    return not (started and switch.changed_at and started < switch.changed_at)


def flag_ran_during_kill(action: Action) -> None:
    action.ran_during_kill = True
    if action.session_id is not None:
        AgentSession.objects.filter(pk=action.session_id).update(ran_during_kill=True)


def duration_text(span: timedelta) -> str:
    minutes, seconds = divmod(int(span.total_seconds()), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [(days, "d"), (hours, "h"), (minutes, "min"), (seconds, "s")]
    shown = [f"{n} {unit}" for n, unit in parts if n][:2]
    return " ".join(shown) or "0 s"


QUARANTINE_ACTOR = "quarantine"
