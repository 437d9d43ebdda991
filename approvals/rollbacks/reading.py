from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from approvals.core import perm
from approvals.models import RollbackPlan, RollbackStep
from approvals.rollbacks.connectors import (
    ConnectorError,
    Context,
    connector_call,
    connector_supports,
    connectors_for,
)
from approvals.rollbacks.planning import FINISHED_STEPS, NEEDS_A_PERSON

M = RollbackStep.Method


T = RollbackStep.State


@dataclass(frozen=True)
class Progress:
    plan: RollbackPlan
    counts: dict[str, int]
    finished: int
    rate: float | None  # steps finished per second since the start

    @property
    def percent(self) -> int:
        return int(100 * self.finished / self.plan.total) if self.plan.total else 100


def step_counts(plan: RollbackPlan) -> dict[str, int]:
    """How many of the plan's steps are in each state (every state, zeros too)."""
    counts = dict.fromkeys(T.values, 0)
    counts.update(dict(plan.steps.values_list("state").annotate(n=Count("id"))))
    return counts


def plan_progress(plan: RollbackPlan) -> Progress:
    counts = step_counts(plan)
    finished = sum(counts[s] for s in (*FINISHED_STEPS, T.FAILED))
    rate = None
    if plan.started_at and counts[T.DONE]:
        end = plan.finished_at or timezone.now()
        seconds = max((end - plan.started_at).total_seconds(), 0.001)
        rate = counts[T.DONE] / seconds
    return Progress(plan, counts, finished, rate)


def steps_waiting(plan: RollbackPlan, limit: int = 50) -> list[RollbackStep]:
    return list(
        plan.steps.filter(state__in=NEEDS_A_PERSON)
        .select_related("action", "action__agent")
        .order_by("position")[:limit]
    )


def plan_context(plan: RollbackPlan, user: Any) -> dict[str, Any]:
    """What the live parts of a plan page show (the page and websocket pushes)."""
    progress = plan_progress(plan)
    return {
        "plan": plan,
        "progress": progress,
        "waiting": steps_waiting(plan),
        "recent": plan.steps.filter(state__in=[RollbackStep.State.DONE, RollbackStep.State.FAILED])
        .exclude(finished_at=None)
        .select_related("action")
        .order_by("-finished_at")[:10],
        "can_run": user.has_perm(perm("run_rollback")),
        "needs_confirmation": needs_confirmation(plan),
    }


def read_current(steps: list[RollbackStep]) -> dict[int, tuple[Any, str]]:
    """Each step's target as it reads now: (state, error). Reads run side by side."""
    connectors = connectors_for({s.action.domain_id for s in steps})

    def read(step: RollbackStep) -> tuple[int, tuple[Any, str]]:
        connector = connectors.get((step.action.domain_id, step.action.tool))
        if connector is None or not connector_supports(connector, "read"):
            return step.pk, (None, "no connector reads this target")
        context = Context(action=step.action, target=step.target, key=f"preview:{step.pk}")
        try:
            return step.pk, (connector_call(connector, "read", context), "")
        except ConnectorError as exc:
            return step.pk, (None, str(exc))

    readable = [s for s in steps if s.method != M.MANUAL]
    with ThreadPoolExecutor(min(8, max(1, len(readable)))) as pool:
        return dict(pool.map(read, readable))


def needs_confirmation(plan: RollbackPlan) -> bool:
    return plan.total > settings.ROLLBACK_CONFIRM_OVER
