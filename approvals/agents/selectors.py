"""What the Agents page shows: each agent, the tokens it holds, whether it is connected and
which kill switch state it acknowledged, and whether it is quarantined."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db.models import Count, F, Max, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from approvals.models import Action, Agent, AgentLink, AgentToken, AuditEvent, links_open

TOKENS_SHOWN = 5  # per agent; the count says how many more


@dataclass(frozen=True)
class AgentRow:
    agent: Agent
    live_tokens: int
    domains: list[str]
    last_action_at: datetime | None
    quarantined_by: str
    tokens: list[AgentToken] = field(default_factory=list)  # the live ones, soonest to expire
    sockets: int = 0  # open on /ws/agent/
    acked_version: int | None = None  # the newest kill switch state it acknowledged
    last_seen_at: datetime | None = None  # its last action, poll, or socket the desk confirmed

    @property
    def tokens_not_shown(self) -> int:
        return self.live_tokens - len(self.tokens)


def agents_listed() -> QuerySet[Agent]:
    """Quarantined agents first, the latest first; then the others by name."""
    last_action = (
        Action.objects.filter(agent=OuterRef("pk")).order_by("-created_at").values("created_at")
    )
    return (
        Agent.objects.select_related("owner")
        .annotate(last_action_at=Subquery(last_action[:1]))
        .order_by(F("quarantined_at").desc(nulls_last=True), "name")
    )


def agents_summary() -> dict[str, int]:
    return Agent.objects.aggregate(
        total=Count("id"), quarantined=Count("id", filter=Q(quarantined_at__isnull=False))
    )


def agent_rows(agents: Iterable[Agent]) -> list[AgentRow]:
    """One row per agent, in two queries however many agents: their live tokens, and who
    quarantined those that are (from the audit trail)."""
    agents = list(agents)
    live = (
        AgentToken.objects.filter(agent__in=agents, revoked_at=None, expires_at__gt=timezone.now())
        .select_related("domain")
        .order_by("expires_at")
    )
    counts: Counter[int] = Counter()
    domains: defaultdict[int, set[str]] = defaultdict(set)
    tokens: defaultdict[int, list[AgentToken]] = defaultdict(list)
    for token in live:
        counts[token.agent_id] += 1
        domains[token.agent_id].add(token.domain.slug)
        if len(tokens[token.agent_id]) < TOKENS_SHOWN:
            tokens[token.agent_id].append(token)
    links: dict[int, dict[str, Any]] = {
        row["agent_id"]: dict(row)
        for row in AgentLink.objects.filter(agent__in=agents)
        .values("agent_id")
        .annotate(
            open=Count("id", filter=links_open()),
            acked=Max("acked_version", filter=Q(acked_at__isnull=False)),
            seen=Max("seen_at"),
        )
    }
    quarantined = [str(a.pk) for a in agents if a.quarantined_at is not None]
    # Ordered oldest first, so each agent keeps its latest quarantine's actor.
    by = dict(
        AuditEvent.objects.filter(
            action="agent.quarantined", object_type="agent", object_id__in=quarantined
        )
        .order_by("id")
        .values_list("object_id", "actor")
    )
    return [
        AgentRow(
            agent=agent,
            live_tokens=counts[agent.pk],
            domains=sorted(domains[agent.pk]),
            last_action_at=getattr(agent, "last_action_at", None),
            quarantined_by=by.get(str(agent.pk), "") if agent.quarantined_at else "",
            tokens=tokens[agent.pk],
            sockets=links.get(agent.pk, {}).get("open", 0),
            acked_version=links.get(agent.pk, {}).get("acked"),
            last_seen_at=_latest(
                getattr(agent, "last_action_at", None),
                agent.polled_at,
                links.get(agent.pk, {}).get("seen"),
            ),
        )
        for agent in agents
    ]


def _latest(*moments: datetime | None) -> datetime | None:
    return max((m for m in moments if m is not None), default=None)
