"""What the Agents page shows: each agent, what it holds, and whether it is quarantined."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, F, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from approvals.models import Action, Agent, AgentToken, AuditEvent


@dataclass(frozen=True)
class AgentRow:
    agent: Agent
    live_tokens: int
    domains: list[str]
    last_action_at: datetime | None
    quarantined_by: str


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
    live = AgentToken.objects.filter(
        agent__in=agents, revoked_at=None, expires_at__gt=timezone.now()
    ).values_list("agent_id", "domain__slug")
    counts: Counter[int] = Counter()
    domains: defaultdict[int, set[str]] = defaultdict(set)
    for agent_id, slug in live:
        counts[agent_id] += 1
        domains[agent_id].add(slug)
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
        )
        for agent in agents
    ]
