from __future__ import annotations

import json
import uuid

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from approvals.audit import Actor
from approvals.core import (
    BadJSON,
    HtmxHttpRequest,
    OutOfLimits,
    Refused,
    parse_json,
    perm,
    require,
)
from approvals.models import (
    Action,
    Domain,
)
from approvals.notifications import failed_deliveries
from approvals.queue.decisions import escalation_decide
from approvals.queue.escalations import may_decide
from approvals.queue.runs import (
    RECONCILE_OUTCOMES,
    action_reconcile,
    reconcile_queue,
    run_outcomes,
)
from approvals.queue.selectors import (
    SNAPSHOT_LINES_SHOWN,
    QueueFilters,
    compare_states,
    decision_context,
    flatten,
    frozen_context,
    modification,
    queue_groups,
    ran_params_diff,
    snapshot_comparison,
    state_changes,
    would_change,
)
from approvals.rollbacks import undo_preview


@require_GET
@require("view_desk")
def queue(request: HtmxHttpRequest) -> HttpResponse:
    filters, errors = QueueFilters.from_query(request.GET)
    groups, total = queue_groups(filters) if not errors else ([], 0)
    context = {
        "groups": groups,
        "total": total,
        "filters": filters,
        "errors": errors,
        "form": request.GET,
        "domains": Domain.objects.values_list("slug", flat=True),
        "failed_notifications": failed_deliveries(5),
        **frozen_context(),
    }
    template = "approvals/queue/queue.html#groups" if request.htmx else "approvals/queue/queue.html"
    return render(request, template, context, status=400 if errors else 200)


@require_GET
@require("view_desk")
def review(request: HtmxHttpRequest, action_id: uuid.UUID) -> HttpResponse:
    action = get_object_or_404(
        Action.objects.select_related("agent", "domain", "session"), pk=action_id
    )
    steps = action.session.steps.all() if action.session else []
    snapshot_lines = flatten(action.pre_action_state) if action.pre_action_state is not None else []
    context = {
        **decision_context(action, request.user),
        "steps": steps,
        "changes": would_change(action),
        "modification": modification(action),
        "snapshot_lines": snapshot_lines[:SNAPSHOT_LINES_SHOWN],
        "snapshot_more": max(0, len(snapshot_lines) - SNAPSHOT_LINES_SHOWN),
        "comparison": snapshot_comparison(action),
        "state_changes": state_changes(action),
        "ran_params_diff": ran_params_diff(action),
        "undo": undo_preview(action),
        "compensation_params": json.dumps((action.compensation or {}).get("params", {})),
        "targets_shown": action.target_ids[:50],
        "targets_more": max(0, len(action.target_ids) - 50),
    }
    return render(request, "approvals/queue/review.html", context)


@require_POST
@require("view_desk")
def decide(request: HtmxHttpRequest, action_id: uuid.UUID) -> HttpResponse:
    action = get_object_or_404(Action.objects.select_related("agent", "domain"), pk=action_id)
    if not may_decide(request.user, action) and action.status == Action.Status.ESCALATED:
        raise PermissionDenied(f"Deciding tier {action.tier} needs its permission.")
    verdict = request.POST.get("verdict", "")
    params = None
    if verdict == "modify":
        try:
            params = parse_json(request.POST.get("params", "").encode())
        except BadJSON as exc:
            return _decision_error(request, action, f"params: not JSON ({exc})", 422)
        except OutOfLimits as exc:
            return _decision_error(request, action, f"params: {exc.explained()}", 422)
    try:
        decision = escalation_decide(
            action_id=action.pk,
            user=request.user,
            verdict=verdict,
            reason=request.POST.get("reason", ""),
            params=params,
            params_seen=request.POST.get("params_seen", ""),
        )
    except Refused as exc:
        action.refresh_from_db()
        field = f"{exc.field}: " if exc.field else ""
        return _decision_error(request, action, field + exc.detail, exc.status)
    if request.htmx:
        return render(
            request,
            "approvals/queue/review.html#decision",
            decision_context(decision.action, request.user),
        )
    if decision.final:
        messages.success(request, f"{decision.action.tool} {decision.action.status}.")
        return redirect("queue")
    if verdict == "modify":
        messages.info(request, f"Modified: the new params wait for {decision.waiting_for}.")
    else:
        messages.info(request, f"Approval recorded; waiting for {decision.waiting_for}.")
    return redirect("review", action_id=action.pk)


def _decision_error(
    request: HtmxHttpRequest, action: Action, error: str, status: int
) -> HttpResponse:
    if request.htmx:
        return render(
            request,
            "approvals/queue/review.html#decision",
            decision_context(action, request.user, error),
            status=status,
        )
    messages.error(request, error)
    return redirect("review", action_id=action.pk)


@require_GET
@require("view_desk")
def reconcile(request: HtmxHttpRequest) -> HttpResponse:
    return render(
        request,
        "approvals/queue/reconcile.html",
        {"actions": reconcile_queue(), "can_settle": request.user.has_perm(perm("run_rollback"))},
    )


@require_GET
@require("view_desk")
def reconcile_action(request: HtmxHttpRequest, action_id: uuid.UUID) -> HttpResponse:
    """One action whose outcome nobody reported: its targets before, as the call would have
    left them, and as the connector reads them now."""
    action = get_object_or_404(Action.objects.select_related("agent", "domain"), pk=action_id)
    outcomes = run_outcomes(action)
    targets = [str(t) for t in action.target_ids]
    rows, differing, more = compare_states(
        outcomes.before,
        [outcomes.expected, outcomes.now.snapshot if outcomes.now.taken else None],
        targets,
    )
    return render(
        request,
        "approvals/queue/reconcile_action.html",
        {
            "action": action,
            "outcomes": outcomes,
            "rows": rows,
            "more": more,
            "waiting": action.status == Action.Status.EXECUTING
            and action.reconcile_since is not None,
            "choices": list(RECONCILE_OUTCOMES),
            "can_settle": request.user.has_perm(perm("run_rollback")),
        },
    )


@require_POST
@require("run_rollback")
def reconcile_settle(request: HtmxHttpRequest, action_id: uuid.UUID) -> HttpResponse:
    action = get_object_or_404(Action, pk=action_id)
    try:
        settled = action_reconcile(
            action_id=action.pk,
            actor=Actor.user(request.user),
            outcome=request.POST.get("outcome", ""),
            reason=request.POST.get("reason", ""),
        )
    except Refused as exc:
        messages.error(request, exc.detail)
        return redirect("reconcile-action", action_id=action.pk)
    messages.success(
        request, f"{settled.tool}:{settled.verb} settled as {settled.get_status_display()}."
    )
    return redirect("reconcile")
