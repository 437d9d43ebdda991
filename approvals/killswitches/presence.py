"""What the kill switch page shows of the agents: who holds the current state, who is
connected but silent, who polls, and how long the last engage took to contain."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Count, Max, Q
from django.template.loader import render_to_string
from django.utils import timezone

from approvals.killswitches.acks import (
    CONTAIN_WINDOW,
    links_waiting,
)
from approvals.models import Agent, AgentLink, AgentToken, KillSwitchChange

# The order rows are listed in: what needs a look first.
STATES = ("silent", "behind", "away", "acknowledged")

STATE_LABELS = {
    "silent": "connected but silent",
    "behind": "polled an older version",
    "away": "not connected",
    "acknowledged": "acknowledged",
}


@dataclass(frozen=True)
class AgentHeard:
    name: str
    domains: list[str]
    state: str
    sockets: int
    acked_version: int
    acked_at: datetime | None
    polled_version: int
    polled_at: datetime | None

    @property
    def label(self) -> str:
        return STATE_LABELS[self.state]


@dataclass(frozen=True)
class Containment:
    change: KillSwitchChange
    awaited: int  # sockets open under the switch at the engage
    agents: int  # the agents holding them
    missing: list[str]  # the agents whose awaited sockets have not all acknowledged

    @property
    def seconds(self) -> float | None:
        return self.change.time_to_contain

    @property
    def given_up(self) -> bool:
        return timezone.now() - self.change.created_at > CONTAIN_WINDOW


@dataclass(frozen=True)
class Presence:
    version: int
    rows: list[AgentHeard]
    total: int
    counts: dict[str, int] = field(default_factory=dict)
    last_engage: Containment | None = None

    @property
    def summary(self) -> list[tuple[str, str, int]]:
        return [(state, STATE_LABELS[state], self.counts.get(state, 0)) for state in STATES]


def agents_heard(*, limit: int | None = 50) -> Presence:
    """Every agent with an open socket or a live token, in need-a-look order."""
    version = KillSwitchChange.objects.current_version()
    links = (
        AgentLink.objects.open()
        .values("agent_id")
        .annotate(
            sockets=Count("id"),
            acked=Max("acked_version"),
            acked_at=Max("acked_at", filter=Q(acked_version__gte=version)),
        )
    )
    by_agent = {row["agent_id"]: row for row in links}
    domains: defaultdict[int, set[str]] = defaultdict(set)
    live_tokens = AgentToken.objects.filter(revoked_at=None, expires_at__gt=timezone.now())
    for agent_id, slug in live_tokens.values_list("agent_id", "domain__slug"):
        domains[agent_id].add(slug)
    agents = Agent.objects.filter(pk__in={*by_agent, *domains}).order_by("name")
    rows = []
    for agent in agents:
        link = by_agent.get(agent.pk)
        if link is not None:
            state = "acknowledged" if link["acked_at"] is not None else "silent"
        elif agent.polled_at is not None:
            state = "acknowledged" if agent.polled_version >= version else "behind"
        else:
            state = "away"
        rows.append(
            AgentHeard(
                name=agent.name,
                domains=sorted(domains[agent.pk]),
                state=state,
                sockets=link["sockets"] if link else 0,
                acked_version=link["acked"] if link else 0,
                acked_at=link["acked_at"] if link else None,
                polled_version=agent.polled_version,
                polled_at=agent.polled_at,
            )
        )
    rows.sort(key=lambda row: STATES.index(row.state))
    counts = Counter(row.state for row in rows)
    return Presence(
        version=version,
        rows=rows if limit is None else rows[:limit],
        total=len(rows),
        counts=dict(counts),
        last_engage=last_engage(),
    )


def last_engage() -> Containment | None:
    change = (
        KillSwitchChange.objects.filter(engaged=True)
        .select_related("switch")
        .order_by("-pk")
        .first()
    )
    if change is None:
        return None
    return containment(change)


def containment(change: KillSwitchChange) -> Containment:
    missing: list[str] = []
    if change.contained_at is None:
        waiting, _ = links_waiting(change)
        missing = sorted({link.agent.name for link in waiting})
    return Containment(
        change=change,
        awaited=len(change.awaited),
        agents=change.awaited_agents,
        missing=missing,
    )


def presence_html(*, show_all: bool = False) -> str:
    """The page's agents panel, to replace the one on open pages."""
    return render_to_string(
        "approvals/killswitches/killswitches.html#presence",
        {"presence": agents_heard(limit=None if show_all else 50), "oob": True},
    )
