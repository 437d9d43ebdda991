"""Who heard the kill switches: the agents' sockets, what each acknowledged, their polls, and
each engage's time to contain.

An engage awaits every socket open under it at that moment (an agent may hold several, one per
process). A socket is contained once it acknowledges the engage's version (or a later one). A
socket that closed first, or whose process stopped confirming it, counts once its agent has
since been given that version in the same domain: acknowledged on another socket, or polled it.
The engage is contained when the last awaited socket is, and the time from the engage to that
acknowledgement is its time to contain.

A poll is recorded as a link that opened and closed at once (channel "poll:<agent>:<domain>"):
the version it delivered to that agent in that domain.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
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
    engages_contain()  # the socket may have been the last one waited for, and covered


def links_awaited(scope: str) -> list[tuple[int, int]]:
    """The sockets an engage of `scope` waits for, those open under it now: (link, agent)."""
    links = AgentLink.objects.open()
    if scope != KillSwitch.GLOBAL:
        links = links.filter(domain__slug=scope)
    return sorted(links.values_list("pk", "agent_id"))


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
        current = KillSwitchChange.objects.current_version()
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
        live.presence_changed()
    engages_contain()  # committed: in a transaction of its own, it sees every other one


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


POLL_RECORDED_SECONDS = 5  # a poll that delivers nothing new is recorded this often at most


def killswitch_polled(*, token: AgentToken, version: int) -> None:
    """An agent read the state (GET /api/v1/killswitches): the poll delivered `version` to it
    in its token's domain."""
    now = timezone.now()
    channel = f"poll:{token.agent_id}:{token.domain_id}"
    last = AgentLink.objects.filter(channel=channel).values_list("acked_version", "seen_at")
    known = last.first()
    moved = known is None or known[0] < version
    if (
        known is not None
        and not moved
        and now - known[1] < timedelta(seconds=POLL_RECORDED_SECONDS)
    ):
        return
    try:
        _record_poll(token, channel, version, now)
    except IntegrityError:
        return  # the agent was deleted since its token was read (kept tokens): nothing to record
    if moved:
        engages_contain()


def _record_poll(token: AgentToken, channel: str, version: int, now: datetime) -> None:
    with transaction.atomic():
        Agent.objects.filter(pk=token.agent_id).update(polled_at=now, polled_version=version)
        AgentLink.objects.update_or_create(
            channel=channel,
            defaults={
                "agent_id": token.agent_id,
                "domain_id": token.domain_id,
                "connected_at": now,
                "seen_at": now,
                "closed_at": now,
                "acked_version": version,
                "acked_at": now,
            },
        )
        live.presence_changed()


def engages_contain() -> None:
    """Mark contained every recent engage whose awaited sockets have all been given its
    version. Runs after the transaction that recorded acknowledgements (a close, a poll) has
    committed, in a transaction of its own: of two processes recording the last two at once,
    the later to commit sees both. A conditional update marks each engage once."""
    pending = KillSwitchChange.objects.filter(
        engaged=True, contained_at=None, created_at__gte=timezone.now() - CONTAIN_WINDOW
    )
    for change_id, awaited in pending.values_list("pk", "awaited"):
        # Most calls find a socket still open and behind: one query, and on to the next.
        behind = AgentLink.objects.filter(pk__in=awaited, acked_version__lt=change_id)
        if behind.open().exists():
            continue
        change = KillSwitchChange.objects.select_related("switch").get(pk=change_id)
        waiting, last = links_waiting(change)
        if waiting:
            continue
        _contained(change, last or change.created_at)


def _contained(change: KillSwitchChange, at: datetime) -> None:
    with transaction.atomic():
        marked = KillSwitchChange.objects.filter(pk=change.pk, contained_at=None).update(
            contained_at=at
        )
        if not marked:
            return  # another process marked it first
        change.contained_at = at
        seconds = change.time_to_contain or 0.0
        scope = change.switch.scope
        sockets, agents = len(change.awaited), change.awaited_agents
        audit_record(
            actor=Actor.system("kill-switch"),
            action="killswitch.contained",
            domain="" if scope == KillSwitch.GLOBAL else scope,
            object_type="kill_switch",
            object_id=scope,
            summary=f"Kill switch {scope} contained in {seconds:.3f} s: all {sockets} sockets "
            f"of {agents} agents connected at the engage were given version {change.pk}",
            data={
                "version": change.pk,
                "sockets": sockets,
                "agents": agents,
                "seconds": seconds,
            },
        )
        live.presence_changed()


def links_waiting(change: KillSwitchChange) -> tuple[list[AgentLink], datetime | None]:
    """The sockets an engage awaits that have not been given its version, and when the last
    of those that have was. A socket that acknowledged it has; one that closed, or that its
    process stopped confirming, has once its agent acknowledged or polled the version since
    in the same domain."""
    version = change.pk
    links = list(AgentLink.objects.filter(pk__in=change.awaited).select_related("agent"))
    heard = [link.acked_at for link in links if link.acked_version >= version and link.acked_at]
    behind = [link for link in links if link.acked_version < version]
    fresh = timezone.now() - timedelta(seconds=settings.AGENT_LINK_STALE_SECONDS)

    def is_gone(link: AgentLink) -> bool:  # not open (links_open), in Python
        return link.closed_at is not None or link.seen_at < fresh

    gone = {(link.agent_id, link.domain_id) for link in behind if is_gone(link)}
    given: dict[tuple[int, int], datetime] = {}
    if gone:
        others = AgentLink.objects.filter(
            agent_id__in={agent for agent, _ in gone},
            acked_version__gte=version,
            acked_at__isnull=False,
        ).values_list("agent_id", "domain_id", "acked_at")
        for agent_id, domain_id, at in others:
            key = (agent_id, domain_id)
            if key in gone and at is not None:
                given[key] = min(at, given.get(key, at))
    waiting = [
        link for link in behind if not is_gone(link) or (link.agent_id, link.domain_id) not in given
    ]
    if waiting:
        return waiting, None
    covered = [given[(link.agent_id, link.domain_id)] for link in behind]
    return [], max(heard + covered, default=None)


def links_purge() -> int:
    """Forget sockets closed (or abandoned) more than LINKS_KEPT ago."""
    cutoff = timezone.now() - LINKS_KEPT
    old = Q(closed_at__lt=cutoff) | Q(closed_at=None, seen_at__lt=cutoff)
    deleted, _ = AgentLink.objects.filter(old).delete()
    return deleted
