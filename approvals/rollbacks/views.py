from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_GET, require_POST

from approvals.audit import (
    Actor,
)
from approvals.core import (
    BadJSON,
    HtmxHttpRequest,
    OutOfLimits,
    Refused,
    parse_json,
    perm,
    require,
    whole_number,
)
from approvals.models import (
    Domain,
    RollbackPlan,
    RollbackStep,
)
from approvals.rollbacks.control import (
    plan_cancel,
    plan_confirm,
    plan_pause,
    plan_resume,
    plan_start,
    step_resolve,
)
from approvals.rollbacks.planning import Selection, plan_create
from approvals.rollbacks.reading import plan_context, read_current
from approvals.rollbacks.runner import drifted

STEPS_PAGE_SIZE = 50


def _when(value: str, field: str) -> datetime | None:
    if not value:
        return None
    parsed = parse_datetime(value)
    if parsed is None:
        raise Refused(
            422,
            "Not a time",
            f"{field}: {value!r} is not a date and time (YYYY-MM-DDTHH:MM)",
            field=field,
        )
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed)


def _selection(form: Any) -> Selection:
    ids = tuple(part for part in form.get("actions", "").replace(",", " ").split() if part)
    for value in ids:
        try:
            uuid.UUID(value)
        except ValueError:
            raise Refused(
                422, "Not an action id", f"actions: {value!r} is not an action id", field="actions"
            ) from None
    return Selection(
        scope=form.get("scope", ""),
        session=form.get("session", "").strip(),
        agent=form.get("agent", "").strip(),
        domain=form.get("domain", "").strip(),
        since=_when(form.get("since", ""), "since"),
        until=_when(form.get("until", ""), "until"),
        action_ids=ids,
    )


def _rollbacks_page(
    request: HttpRequest, form: Any, error: str = "", status: int = 200
) -> HttpResponse:
    return render(
        request,
        "approvals/rollbacks/rollbacks.html",
        {
            "plans": RollbackPlan.objects.select_related("domain")[:50],
            "form": form,
            "error": error,
            "can_run": request.user.has_perm(perm("run_rollback")),
            "domains": Domain.objects.values_list("slug", flat=True),
            "scopes": RollbackPlan.Scope.values,
        },
        status=status,
    )


@require_GET
@require("view_desk")
def rollbacks(request: HttpRequest) -> HttpResponse:
    return _rollbacks_page(request, request.GET)


@require_POST
@require("run_rollback")
def rollback_new(request: HttpRequest) -> HttpResponse:
    try:
        plan = plan_create(
            actor=Actor.user(request.user),
            selection=_selection(request.POST),
            reason=request.POST.get("reason", ""),
        )
    except Refused as exc:
        field = f"{exc.field}: " if exc.field and not exc.detail.startswith(exc.field) else ""
        return _rollbacks_page(request, request.POST, field + exc.detail, exc.status)
    return redirect("rollback", plan_id=plan.pk)


@require_GET
@require("view_desk")
def rollback(request: HtmxHttpRequest, plan_id: uuid.UUID) -> HttpResponse:
    plan = get_object_or_404(RollbackPlan.objects.select_related("domain"), pk=plan_id)
    pages = max(1, -(-plan.total // STEPS_PAGE_SIZE))
    return render(
        request,
        "approvals/rollbacks/rollback_plan.html",
        {**plan_context(plan, request.user), "pages": range(1, pages + 1)},
    )


@require_GET
@require("view_desk")
def rollback_steps(request: HtmxHttpRequest, plan_id: uuid.UUID) -> HttpResponse:
    """One page of a plan's steps, each target read now, drift marked."""
    plan = get_object_or_404(RollbackPlan, pk=plan_id)
    page = whole_number(request.GET.get("page", "1"), low=1, high=10**6) or 1
    start = (page - 1) * STEPS_PAGE_SIZE
    steps = list(
        plan.steps.select_related("action", "action__domain").order_by("position")[
            start : start + STEPS_PAGE_SIZE
        ]
    )
    current = read_current(steps)
    rows = []
    for step in steps:
        now, error = current.get(step.pk, (None, "not read: manual step"))
        rows.append(
            {"step": step, "now": now, "error": error, "drift": not error and drifted(step, now)}
        )
    return render(
        request,
        "approvals/rollbacks/rollback_plan.html#steps",
        {"plan": plan, "rows": rows, "page": page},
    )


ROLLBACK_VERBS = {
    "start": plan_start,
    "confirm": plan_confirm,
    "pause": plan_pause,
    "resume": plan_resume,
}


def _plan_answer(
    request: HtmxHttpRequest, plan_id: uuid.UUID, error: Refused | None
) -> HttpResponse:
    """htmx gets the plan's progress section back (with the error, if any); a plain form
    post goes back to the plan page."""
    if request.htmx:
        plan = get_object_or_404(RollbackPlan.objects.select_related("domain"), pk=plan_id)
        context = {**plan_context(plan, request.user), "error": error.detail if error else ""}
        return render(
            request,
            "approvals/rollbacks/rollback_plan.html#progress",
            context,
            status=error.status if error else 200,
        )
    if error:
        messages.error(request, error.detail)
    return redirect("rollback", plan_id=plan_id)


@require_POST
@require("run_rollback")
def rollback_control(request: HtmxHttpRequest, plan_id: uuid.UUID) -> HttpResponse:
    verb = request.POST.get("verb", "")
    actor = Actor.user(request.user)
    try:
        if verb == "cancel":
            plan_cancel(plan_id=plan_id, actor=actor, reason=request.POST.get("reason", ""))
        elif verb in ROLLBACK_VERBS:
            ROLLBACK_VERBS[verb](plan_id=plan_id, actor=actor)
        else:
            raise Refused(422, "Unknown verb", f"choose {', '.join([*ROLLBACK_VERBS, 'cancel'])}")
    except Refused as exc:
        return _plan_answer(request, plan_id, exc)
    return _plan_answer(request, plan_id, None)


@require_POST
@require("run_rollback")
def rollback_step(request: HtmxHttpRequest, plan_id: uuid.UUID, step_id: int) -> HttpResponse:
    get_object_or_404(RollbackStep, pk=step_id, plan_id=plan_id)
    decision = request.POST.get("decision", "")
    state = None
    try:
        if decision == "edit":
            try:
                state = parse_json(request.POST.get("state", "").encode())
            except BadJSON as exc:
                raise Refused(422, "Not JSON", f"state: not JSON ({exc})", field="state") from exc
            except OutOfLimits as exc:
                detail = f"state: {exc.explained()}"
                raise Refused(422, "Out of limits", detail, field="state") from exc
        step_resolve(
            step_id=step_id,
            actor=Actor.user(request.user),
            decision=decision,
            state=state,
            note=request.POST.get("note", ""),
        )
    except Refused as exc:
        return _plan_answer(request, plan_id, exc)
    return _plan_answer(request, plan_id, None)
