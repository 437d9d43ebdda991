"""Who heard the kill switches: the agents' sockets, what each acknowledged, their polls, and
each engage's time to contain.

An engage awaits every socket open under it at that moment (an agent may hold several, one per
process). A socket is contained once it acknowledges the engage's version (or a later one); a
socket that closed first counts once its agent has since acknowledged on another socket or
polled that version. The engage is contained when the last awaited socket is, and the time from
the engage to then is its time to contain.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import Max, Q
from django.utils import timezone

from approvals import live
from approvals.audit import Actor, audit_record
from approvals.models import Agent, AgentLink, AgentToken, KillSwitch, KillSwitchChange
from incidentdesk.db import relax_durability

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


@dataclass(frozen=True)
class Ack:
    """One socket's word that it holds the state of `version`, received at `at`."""

    channel: str
    version: int
    at: datetime


def killswitch_acknowledge(*, acks: list[Ack]) -> None:
    """Agents say, each on one of its sockets, that they hold the state of a version. A web
    process gathers what its sockets receive for a moment and records it here at once (one
    transaction, not one per socket: a thousand agents answer an engage together).

    A version the desk never sent is a claim it cannot take, and is ignored. The commit does
    not wait for its WAL flush: a crash may lose acknowledgements, which leaves an engage
    waiting for them, never contained when it was not."""
    with transaction.atomic():
        relax_durability()
        current = current_version()
        latest: dict[str, Ack] = {}
        for ack in acks:
            kept = latest.get(ack.channel)
            if ack.version <= current and (kept is None or ack.version > kept.version):
                latest[ack.channel] = ack
        moved = []
        for link in AgentLink.objects.filter(channel__in=latest):
            ack = latest[link.channel]
            if link.acked_at is None or link.acked_version < ack.version:
                link.acked_version, link.acked_at, link.seen_at = ack.version, ack.at, ack.at
                moved.append(link)
        if not moved:
            return
        _write_acks(moved)
        heard = {link.pk: latest[link.channel].at for link in moved}
        _contain(heard, max(link.acked_version for link in moved))
        live.presence_changed()


def _write_acks(links: list[AgentLink]) -> None:
    """Save the links' acknowledgements in one statement (Django's bulk_update compiles a CASE
    per row and field: most of a thousand acknowledgements' time)."""
    if connection.vendor != "postgresql":
        AgentLink.objects.bulk_update(links, ["acked_version", "acked_at", "seen_at"])
        return
    table = AgentLink._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} AS link SET acked_version = v.version, acked_at = v.at, "
            "seen_at = v.at FROM unnest(%s::bigint[], %s::bigint[], %s::timestamptz[]) "
            "AS v(id, version, at) WHERE link.id = v.id",
            [
                [link.pk for link in links],
                [link.acked_version for link in links],
                [link.acked_at for link in links],
            ],
        )


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
        _contain(dict.fromkeys(closed.values_list("pk", flat=True), now), version)
        live.presence_changed()


def _contain(heard: dict[int, datetime], version: int) -> None:
    """Mark contained every engage up to `version` whose last awaited sockets are among
    `heard` (the sockets these acknowledgements or this poll speak for, and when). Each
    engage's row is locked first, so of two transactions recording acknowledgements at once
    the second sees the first's, and one of them finds the engage complete."""
    if not heard:
        return
    pending = KillSwitchChange.objects.filter(
        engaged=True,
        contained_at=None,
        pk__lte=version,
        created_at__gte=timezone.now() - CONTAIN_WINDOW,
    )
    for change_id, awaited in pending.values_list("pk", "awaited"):
        waited_for = set(awaited)
        times = [at for link_id, at in heard.items() if link_id in waited_for]
        if not times:
            continue
        at = max(times)
        # Most acknowledgements find another socket still open and behind: without a lock.
        behind = AgentLink.objects.filter(pk__in=awaited, acked_version__lt=change_id)
        if behind.filter(closed_at=None).exists():
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
