"""Who heard the kill switches: the agents' sockets, what each acknowledged, their polls, and
each engage's time to contain.

An engage awaits every socket open under it at that moment (an agent may hold several, one per
process). A socket is contained once it acknowledges the engage's version (or a later one); a
socket that closed first counts once its agent has since acknowledged on another socket or
polled that version. The engage is contained when the last awaited socket is, and the time from
the engage to then is its time to contain.
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


def links_awaited(scope: str) -> list[int]:
    """The sockets an engage of `scope` waits for: those open under it now."""
    links = AgentLink.objects.open()
    if scope != KillSwitch.GLOBAL:
        links = links.filter(domain__slug=scope)
    return sorted(links.values_list("pk", flat=True))


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
            _contain({link.pk}, version, now)
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
        # The poll stands for the agent's sockets that closed without acknowledging.
        closed = AgentLink.objects.filter(agent_id=token.agent_id, closed_at__isnull=False)
        _contain(set(closed.values_list("pk", flat=True)), version, now)
        live.presence_changed()


def _contain(heard: set[int], version: int, at: datetime) -> None:
    """Mark contained every engage up to `version` whose last awaited socket is among `heard`
    (the sockets this acknowledgement or poll speaks for). Each engage's row is locked first,
    so of two sockets acknowledging at once the second sees the first's acknowledgement, and
    one of them finds the engage complete."""
    if not heard:
        return
    pending = KillSwitchChange.objects.filter(
        engaged=True, contained_at=None, pk__lte=version, created_at__gte=at - CONTAIN_WINDOW
    )
    for change_id, awaited in pending.values_list("pk", "awaited"):
        if heard.isdisjoint(awaited):
            continue
        change = (
            KillSwitchChange.objects.select_for_update().select_related("switch").get(pk=change_id)
        )
        if change.contained_at is not None or links_waiting(change):
            continue
        change.contained_at = at
        change.save(update_fields=["contained_at"])
        seconds = change.time_to_contain or 0.0
        scope = change.switch.scope
        agents = AgentLink.objects.filter(pk__in=awaited).values("agent_id").distinct().count()
        audit_record(
            actor=Actor.system("kill-switch"),
            action="killswitch.contained",
            domain="" if scope == KillSwitch.GLOBAL else scope,
            object_type="kill_switch",
            object_id=scope,
            summary=f"Kill switch {scope} contained in {seconds:.3f} s: all {len(awaited)} "
            f"sockets of {agents} agents connected at the engage acknowledged version {change.pk}",
            data={
                "version": change.pk,
                "sockets": len(awaited),
                "agents": agents,
                "seconds": seconds,
            },
        )


def current_version() -> int:
    return KillSwitchChange.objects.aggregate(v=Max("id"))["v"] or 0


def links_waiting(change: KillSwitchChange) -> list[AgentLink]:
    """The sockets an engage awaits that have not acknowledged its version: open ones, and
    closed ones whose agent has not acknowledged it on another socket nor polled it since."""
    behind = AgentLink.objects.filter(pk__in=change.awaited, acked_version__lt=change.pk)
    waiting = list(behind.select_related("agent"))
    closed = {link.agent_id for link in waiting if link.closed_at is not None}
    if closed:
        heard = set(
            AgentLink.objects.filter(agent_id__in=closed, acked_version__gte=change.pk).values_list(
                "agent_id", flat=True
            )
        ) | set(
            Agent.objects.filter(pk__in=closed, polled_version__gte=change.pk).values_list(
                "pk", flat=True
            )
        )
        waiting = [link for link in waiting if link.closed_at is None or link.agent_id not in heard]
    return waiting


def links_purge() -> int:
    """Forget sockets closed (or abandoned) more than LINKS_KEPT ago."""
    cutoff = timezone.now() - LINKS_KEPT
    old = Q(closed_at__lt=cutoff) | Q(closed_at=None, seen_at__lt=cutoff)
    deleted, _ = AgentLink.objects.filter(old).delete()
    return deleted
