"""Selectors for the approval queue and the review page: what operators see, never what changes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any
from urllib.parse import urlencode

from django.db.models import Count, Q, QuerySet
from django.http import QueryDict
from django.utils import timezone

from approvals.core import whole_number
from approvals.models import Action, Agent, AuditEvent, Domain, KillSwitch
from approvals.queue.escalations import (
    effective_params,
    may_decide,
    params_diff,
    params_fingerprint,
)
from approvals.rollbacks import snapshot_differences, state_of

S = Action.Status


SNAPSHOT_LINES_SHOWN = 2000


SNAPSHOT_TARGETS_SHOWN = 50  # targets whose claimed and read states are shown side by side


PER_TIER = 20  # rows shown per tier; the rest are counted, and filters narrow them


@dataclass(frozen=True)
class QueueFilters:
    domain: str = ""
    agent: str = ""
    tier: int | None = None
    min_age_minutes: int | None = None

    @classmethod
    def from_query(cls, query: QueryDict | dict[str, str]) -> tuple[QueueFilters, dict[str, str]]:
        errors: dict[str, str] = {}

        def number(name: str, low: int, high: int) -> int | None:
            raw = str(query.get(name, "") or "").strip()
            if not raw:
                return None
            value = whole_number(raw, low=low, high=high)
            if value is None:
                errors[name] = f"{raw!r} is not a whole number from {low} to {high}"
            return value

        filters = cls(
            domain=str(query.get("domain", "") or "").strip(),
            agent=str(query.get("agent", "") or "").strip(),
            tier=number("tier", 1, 9),
            min_age_minutes=number("age", 0, 10_000),
        )
        return filters, errors

    @cached_property
    def _ids(self) -> tuple[int | None, int | None]:
        # The domain's and agent's ids, read once: with a literal id the planner reads the
        # open escalations' index in order and stops at PER_TIER rows, where a join on the
        # slug made it fetch and sort every open row of the domain.
        domain = Domain.objects.filter(slug=self.domain).values_list("id", flat=True).first()
        agent = Agent.objects.filter(name=self.agent).values_list("id", flat=True).first()
        return domain, agent

    def apply(self, actions: QuerySet[Action], now: datetime) -> QuerySet[Action]:
        if self.domain or self.agent:
            domain_id, agent_id = self._ids
            if self.domain:
                if domain_id is None:
                    return actions.none()
                actions = actions.filter(domain_id=domain_id)
            if self.agent:
                if agent_id is None:
                    return actions.none()
                actions = actions.filter(agent_id=agent_id)
        if self.tier is not None:
            actions = actions.filter(tier=self.tier)
        if self.min_age_minutes:
            actions = actions.filter(created_at__lte=now - timedelta(minutes=self.min_age_minutes))
        return actions

    def matches(self, action: Action, now: datetime) -> bool:
        """The same test as `apply`, for one loaded action (live updates)."""
        return (
            (not self.domain or action.domain.slug == self.domain)
            and (not self.agent or action.agent.name == self.agent)
            and (self.tier is None or action.tier == self.tier)
            and (
                not self.min_age_minutes
                or action.created_at <= now - timedelta(minutes=self.min_age_minutes)
            )
        )

    def query(self) -> str:
        pairs = {
            "domain": self.domain,
            "agent": self.agent,
            "tier": self.tier,
            "age": self.min_age_minutes,
        }
        return urlencode({k: v for k, v in pairs.items() if v not in ("", None)})


QUEUE_ROW_FIELDS = (
    "id",
    "status",
    "tier",
    "sla_due_at",
    "created_at",
    "tool",
    "verb",
    "amount",
    "currency",
    "blast_records",
    "blast_population",
    "rule",
    "agent__name",
    "domain__slug",
)


def open_escalations() -> QuerySet[Action]:
    return (
        Action.objects.filter(status=S.ESCALATED)
        .select_related("agent", "domain")
        # What a queue row shows and a live update filters on, and nothing else: building
        # the rest of each row cost more than the queries.
        .only(*QUEUE_ROW_FIELDS)
        .order_by("tier", "sla_due_at", "created_at")
    )


@dataclass
class TierGroup:
    level: int
    total: int
    items: list[Action] = field(default_factory=list)


def queue_groups(filters: QueueFilters) -> tuple[list[TierGroup], int]:
    """Open escalations grouped by tier, the most urgent PER_TIER of each, and how many match
    in all. Its query count depends on the number of tiers, never on the size of the queue."""
    now = timezone.now()
    counts = dict(
        filters.apply(Action.objects.filter(status=S.ESCALATED), now)
        .values_list("tier")
        .annotate(n=Count("id"))
        .order_by()
    )
    groups = []
    for level in sorted({1, 2, 3, *counts}):
        items = list(filters.apply(open_escalations().filter(tier=level), now)[:PER_TIER])
        groups.append(TierGroup(level, counts.get(level, 0), items))
    return groups, sum(counts.values())


def queue_count() -> int:
    return Action.objects.filter(status=S.ESCALATED).count()


def flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """A JSON value as (path, value) lines: `orders.0.qty = 2`."""
    if isinstance(value, dict):
        if not value:
            return [(prefix or "(root)", "{}")]
        return [
            line
            for k, v in value.items()
            for line in flatten(v, f"{prefix}.{k}" if prefix else str(k))
        ]
    if isinstance(value, list):
        if not value:
            return [(prefix or "(root)", "[]")]
        return [
            line
            for i, v in enumerate(value)
            for line in flatten(v, f"{prefix}.{i}" if prefix else str(i))
        ]
    return [(prefix or "(root)", json.dumps(value))]


@dataclass(frozen=True)
class FieldChange:
    field: str
    before: str
    after: str
    changes: bool


def would_change(action: Action) -> list[FieldChange]:
    """Per field of the snapshot the params name: its value now (the desk's own read where it
    has one, else the agent's claim), and what the action sets."""
    params = effective_params(action)
    known = action.state_before
    snapshot = known if isinstance(known, dict) else {}
    missing = object()
    rows = []
    for key, after in params.items():
        before = snapshot.get(key, missing)
        if before is missing:
            continue
        rows.append(FieldChange(key, json.dumps(before), json.dumps(after), before != after))
    return rows


@dataclass(frozen=True)
class JsonPart:
    """A piece of indented JSON: a top-level field of an object, its braces, or a whole value."""

    text: str
    differs: bool = False


def json_parts(value: Any, fields: set[str], whole: bool) -> list[JsonPart]:
    """`value` as indented JSON in pieces, one per top-level field of an object; a piece is
    marked when its field is one of `fields`, or when `whole` (the whole value differs)."""
    if not isinstance(value, dict) or not value:
        return [JsonPart(json.dumps(value, indent=2), whole)]
    parts = [JsonPart("{")]
    for n, (key, item) in enumerate(value.items(), start=1):
        nested = json.dumps(item, indent=2).replace("\n", "\n  ")
        comma = "," if n < len(value) else ""
        parts.append(JsonPart(f"  {json.dumps(key)}: {nested}{comma}", whole or key in fields))
    return [*parts, JsonPart("}")]


@dataclass(frozen=True)
class SnapshotRow:
    """One target's state in two (or three) versions, side by side as indented JSON, the
    fields that differ marked."""

    target: str
    differs: bool
    fields: tuple[str, ...]  # the top-level fields that differ; none named: the whole state
    columns: list[list[JsonPart]]


@dataclass(frozen=True)
class SnapshotComparison:
    read: bool  # whether the desk read the targets itself when the action was proposed
    missing: str  # why it did not, when its proposal's audit event says
    rows: list[SnapshotRow]
    differing: int
    more: int


def compare_states(
    reference: Any, versions: list[Any], targets: list[str]
) -> tuple[list[SnapshotRow], int, int]:
    """Per target, `reference` and each of `versions` (all in the shape agents send snapshots:
    see `state_of`), marking the fields where any version differs from the reference; targets
    that differ first. Returns (rows shown, targets differing, targets not shown)."""
    names = targets or [""]
    differences: dict[str, set[str] | None] = {}  # None: the whole state differs
    for version in versions:
        for d in snapshot_differences(reference, version, targets):
            if not d.fields:
                differences[d.target] = None
            elif differences.get(d.target, set()) is not None:
                differences[d.target] = {*(differences.get(d.target) or set()), *d.fields}
    ordered = sorted(names, key=lambda t: t not in differences)
    rows = []
    for target in ordered[:SNAPSHOT_TARGETS_SHOWN]:
        differs = target in differences
        fields = differences.get(target) or set()
        whole = differs and differences[target] is None
        rows.append(
            SnapshotRow(
                target=target,
                differs=differs,
                fields=tuple(sorted(fields)),
                columns=[
                    json_parts(state_of(value, target, targets), fields, whole)
                    for value in (reference, *versions)
                ],
            )
        )
    return rows, len(differences), len(ordered) - len(rows)


def snapshot_comparison(action: Action) -> SnapshotComparison:
    """The agent's claimed pre-action state next to the desk's own read, target by target, the
    targets that differ first; or, when the desk has no read, why not."""
    read = action.desk_snapshot is not None or action.snapshot_differs
    if not read:
        audited = (
            AuditEvent.objects.filter(object_type="action", object_id=str(action.pk))
            .filter(Q(data__has_key="snapshot_differs") | Q(data__has_key="desk_snapshot_missing"))
            .order_by("id")
            .values_list("data", flat=True)
            .first()
        ) or {}
        if "snapshot_differs" not in audited:  # a read of absent targets is still a read
            return SnapshotComparison(False, audited.get("desk_snapshot_missing", ""), [], 0, 0)
    targets = [str(t) for t in action.target_ids]
    rows, differing, more = compare_states(action.pre_action_state, [action.desk_snapshot], targets)
    return SnapshotComparison(True, "", rows, differing, more)


def state_changes(action: Action) -> SnapshotComparison | None:
    """For an action sent back to the queue because its targets changed after it was
    approved: the state that was approved next to the state read before it would have run."""
    if action.state_changed_at is None:
        return None
    targets = [str(t) for t in action.target_ids]
    rows, differing, more = compare_states(action.approved_state, [action.desk_snapshot], targets)
    return SnapshotComparison(True, "", rows, differing, more)


def ran_params_diff(action: Action) -> list[tuple[str, Any, Any]]:
    """Where the params the agent said it ran differ from those it was allowed."""
    if not action.params_mismatch or action.ran_params is None:
        return []
    return params_diff(effective_params(action), action.ran_params)


def modification(action: Action) -> list[tuple[str, Any, Any]]:
    """What an operator changed in the agent's params, if anyone did."""
    if action.modified_params is None:
        return []
    return params_diff(action.params, action.modified_params)


def decision_context(action: Action, user: Any, error: str = "") -> dict[str, Any]:
    """What the decision panel of the review page shows `user` (a page load, or a push)."""
    frozen_by = (
        KillSwitch.objects.engaged_over(action.domain.slug)
        if action.status == S.ESCALATED
        else None
    )
    return {
        "action": action,
        "approvals": action.approvals.select_related("user").all(),
        "frozen_by": frozen_by,
        "can_decide": action.status == S.ESCALATED
        and frozen_by is None
        and may_decide(user, action),
        "error": error,
        "params_json": json.dumps(effective_params(action), indent=2),
        "params_seen": params_fingerprint(effective_params(action)),
        # The one who modified the params is not the approval that lets them run.
        "modified_by_you": bool(action.modified_by) and action.modified_by == user.get_username(),
    }


def frozen_context() -> dict[str, Any]:
    """Which rows of the queue are frozen by an engaged kill switch (for the row partial)."""
    killed = KillSwitch.objects.killed_domain_ids()
    return {"all_frozen": killed is None, "frozen_ids": killed or set()}
