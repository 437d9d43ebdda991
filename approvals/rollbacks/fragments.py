from __future__ import annotations

from django.template.loader import render_to_string

from approvals.core import Permissions, perm
from approvals.models import RollbackPlan
from approvals.rollbacks.reading import plan_context


def plan_progress_html(plan_id: str, can_run: bool) -> str:
    plan = RollbackPlan.objects.select_related("domain").filter(pk=plan_id).first()
    if plan is None:
        return ""
    granted = frozenset({perm("run_rollback")} if can_run else set())
    context = {**plan_context(plan, Permissions(granted)), "oob": True}
    return render_to_string("approvals/rollbacks/rollback_plan.html#progress", context)
