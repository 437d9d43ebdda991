"""Who heard the kill switches: the agents' sockets, what each acknowledged, their polls, and
each engage's time to contain.

An engage awaits every agent that holds an open socket under it at that moment. An agent is
contained once it acknowledges the engage's version (or a later one) on a socket, or polls it;
the engage is contained when the last awaited agent is, and the time from the engage to then
is its time to contain.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone

from approvals import live
from approvals.audit import Actor, audit_record
from approvals.models import Agent, AgentLink, AgentToken, KillSwitch, KillSwitchChange

# Sockets closed (or left by a process that died) longer ago than this are forgotten.
LINKS_KEPT = timedelta(days=7)

# How long an engage waits for acknowledgements before the desk stops checking; past this
# the engage shows which agents never acknowledged, and stays uncontained.
CONTAIN_WINDOW = timedelta(hours=1)


def link_open(*, token: AgentToken, channel: str) -> None:
    now = timezone.now()
    AgentLink.objects.create(
        agent_id=token.agent_id,
        domain_id=token.domain_id,
        channel=channel,
        connected_at=now,
        seen_at=now,
    )
    live.presence_changed()


def link_seen(*, channel: str) -> None:
    """The process still holds this socket open."""
    AgentLink.objects.filter(channel=channel, closed_at=None).update(seen_at=timezone.now())


def link_close(*, channel: str) -> None:
    AgentLink.objects.filter(channel=channel, closed_at=None).update(closed_at=timezone.now())
    live.presence_changed()


def agents_awaited(scope: str) -> list[int]:
    """The agents an engage of `scope` waits for: those with a socket open under it now."""
    links = AgentLink.objects.open()
    if scope != KillSwitch.GLOBAL:
        links = links.filter(domain__slug=scope)
    return sorted(set(links.values_list("agent_id", flat=True)))


def killswitch_acknowledge(*, channel: str, version: int) -> None:
    """An agent says, on one of its sockets, that it holds the state of `version`."""
    with transaction.atomic():
        now = timezone.now()
        link = AgentLink.objects.filter(channel=channel).first()
        if link is None or version > current_version():
            return  # a version the desk never sent is a claim it cannot take
        behind = Q(acked_at=None) | Q(acked_version__lt=version)
        updated = AgentLink.objects.filter(behind, pk=link.pk).update(
            acked_version=version, acked_at=now, seen_at=now
        )
        if updated:
            _contain(link.agent_id, version, now)
            live.presence_changed()


def killswitch_polled(*, token: AgentToken, version: int) -> None:
    """An agent read the state (GET /api/v1/killswitches): the poll delivered `version`."""
    with transaction.atomic():
        now = timezone.now()
        moved = Agent.objects.filter(pk=token.agent_id, polled_version__lt=version).update(
            polled_at=now, polled_version=version
        )
        if not moved:
            Agent.objects.filter(pk=token.agent_id).update(polled_at=now)
            return
        _contain(token.agent_id, version, now)
        live.presence_changed()


def _contain(agent_id: int, version: int, at: datetime) -> None:
    """Mark contained every engage up to `version` that this agent was the last one awaited
    for. Each engage's row is locked first, so of two agents acknowledging at once the second
    sees the first's acknowledgement, and one of them finds the engage complete."""
    pending = KillSwitchChange.objects.filter(
        engaged=True, contained_at=None, pk__lte=version, created_at__gte=at - CONTAIN_WINDOW
    )
    for change_id, awaited in pending.values_list("pk", "awaited"):
        if agent_id not in awaited:
            continue
        change = (
            KillSwitchChange.objects.select_for_update().select_related("switch").get(pk=change_id)
        )
        if change.contained_at is not None or set(awaited) - contained_agents(change):
            continue
        change.contained_at = at
        change.save(update_fields=["contained_at"])
        seconds = change.time_to_contain or 0.0
        scope = change.switch.scope
        audit_record(
            actor=Actor.system("kill-switch"),
            action="killswitch.contained",
            domain="" if scope == KillSwitch.GLOBAL else scope,
            object_type="kill_switch",
            object_id=scope,
            summary=f"Kill switch {scope} contained in {seconds:.3f} s: "
            f"all {len(awaited)} connected agents acknowledged version {change.pk}",
            data={"version": change.pk, "agents": len(awaited), "seconds": seconds},
        )


def current_version() -> int:
    return KillSwitchChange.objects.aggregate(v=Max("id"))["v"] or 0


def contained_agents(change: KillSwitchChange) -> set[int]:
    """Which of the agents an engage awaits have acknowledged or polled its version."""
    awaited = change.awaited
    acked = AgentLink.objects.filter(agent_id__in=awaited, acked_version__gte=change.pk)
    polled = Agent.objects.filter(pk__in=awaited, polled_version__gte=change.pk)
    return set(acked.values_list("agent_id", flat=True)) | set(polled.values_list("pk", flat=True))


def links_purge() -> int:
    """Forget sockets closed (or abandoned) more than LINKS_KEPT ago."""
    cutoff = timezone.now() - LINKS_KEPT
    old = Q(closed_at__lt=cutoff) | Q(closed_at=None, seen_at__lt=cutoff)
    deleted, _ = AgentLink.objects.filter(old).delete()
    return deleted
