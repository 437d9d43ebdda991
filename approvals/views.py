from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connection, transaction
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from django.views import defaults
from django.views.decorators.http import require_GET, require_POST
from django_htmx.middleware import HtmxDetails

from approvals import audit
from approvals.agents import agent_rows, agents_listed, agents_summary
from approvals.audit import Actor, AuditFilters
from approvals.errors import Refused, problem
from approvals.escalations import escalation_decide, may_decide
from approvals.inputs import MAX_INTEGER, BadJSON, OutOfLimits, parse_json, whole_number
from approvals.killswitches import GLOBAL, killswitch_set
from approvals.models import (
    Action,
    Agent,
    AgentSession,
    Domain,
    KillSwitch,
    KillSwitchChange,
    RollbackPlan,
    RollbackStep,
)
from approvals.notifications import failed_deliveries
from approvals.openapi import document
from approvals.operators import operator_signed_out
from approvals.permissions import require
from approvals.policy import Proposal, policy_current, policy_explain
from approvals.queue import (
    SNAPSHOT_LINES_SHOWN,
    QueueFilters,
    decision_context,
    flatten,
    frozen_context,
    modification,
    queue_groups,
    snapshot_comparison,
    would_change,
)
from approvals.roles import perm
from approvals.rollbacks import (
    Selection,
    drifted,
    plan_cancel,
    plan_confirm,
    plan_context,
    plan_create,
    plan_pause,
    plan_resume,
    plan_start,
    read_current,
    step_resolve,
)
from approvals.stops import agent_quarantine, agent_release
from approvals.timeline import session_timeline, timeline_export
from approvals.tokens import VERBS

AUDIT_PAGE_SIZE = 50


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


class LoginView(auth_views.LoginView):
    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        with transaction.atomic():
            audit.audit_record(
                actor=Actor.user(form.get_user()), action="auth.login", summary="Signed in"
            )
        return response

    # A failed sign-in is counted by django-axes, not audited (what was typed may be a
    # password); a lockout is audited once (approvals/signin.py).


class LogoutView(auth_views.LogoutView):
    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        user = request.user if request.user.is_authenticated else None
        response = super().post(request, *args, **kwargs)
        if user is not None:
            operator_signed_out(user=user)
        return response


@require_GET
@require("view_desk")
def dashboard(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "approvals/dashboard.html",
        {
            "domains": Domain.objects.all(),
            "recent_events": audit.AuditEvent.objects.all()[:8],
            "verification": audit.latest_verification(),
            "failed_notifications": failed_deliveries(5),
        },
    )


def _day(value: str, field: str, errors: dict[str, str]) -> datetime | None:
    if not value:
        return None
    day = parse_date(value)
    if day is None:
        errors[field] = f"{value!r} is not a date (YYYY-MM-DD)"
        return None
    return datetime.combine(day, time.min, tzinfo=timezone.get_current_timezone())


def _audit_filters(request: HttpRequest) -> tuple[AuditFilters, dict[str, str]]:
    errors: dict[str, str] = {}
    query = request.GET
    until = _day(query.get("until", ""), "until", errors)
    filters = AuditFilters(
        action=query.get("action", "").strip(),
        actor=query.get("actor", "").strip(),
        domain=query.get("domain", "").strip(),
        object_id=query.get("object_id", "").strip(),
        since=_day(query.get("since", ""), "since", errors),
        # "until" names the last day to include.
        until=until + timedelta(days=1) if until else None,
    )
    return filters, errors


@require_GET
@require("view_audit")
def audit_list(request: HtmxHttpRequest) -> HttpResponse:
    filters, errors = _audit_filters(request)
    events = audit.audit_events(filters)
    before = whole_number(request.GET.get("before", ""), high=2**63 - 1)
    if before is not None:
        events = events.filter(id__lt=before)
    page = list(events[: AUDIT_PAGE_SIZE + 1]) if not errors else []
    query = request.GET.copy()
    query.pop("before", None)
    context = {
        "events": page[:AUDIT_PAGE_SIZE],
        "older": page[AUDIT_PAGE_SIZE - 1].id if len(page) > AUDIT_PAGE_SIZE else None,
        "filters": filters,
        "form": request.GET,
        "errors": errors,
        "query": query.urlencode(),
        "domains": Domain.objects.values_list("slug", flat=True),
        "verification": audit.latest_verification(),
        "can_verify": request.user.has_perm(perm("verify_audit")),
        "can_export": request.user.has_perm(perm("export_audit")),
    }
    template = "approvals/audit.html#events" if request.htmx else "approvals/audit.html"
    return render(request, template, context, status=400 if errors else 200)


@require_POST
@require("verify_audit")
def audit_verify(request: HtmxHttpRequest) -> HttpResponse:
    verification = audit.verification_request(actor=Actor.user(request.user))
    if request.htmx:
        return render(
            request,
            "approvals/audit.html#chain_status",
            {"verification": verification, "can_verify": True},
        )
    return redirect("audit")


@require_POST
@require("export_audit")
def audit_export(request: HttpRequest) -> HttpResponseBase:
    filters, errors = _audit_filters(request)
    if errors:
        return HttpResponse(
            "; ".join(f"{field}: {message}" for field, message in errors.items()),
            status=400,
            content_type="text/plain",
        )
    lines = audit.audit_export(actor=Actor.user(request.user), filters=filters)
    response = StreamingHttpResponse(lines, content_type="application/jsonl")
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.jsonl"'
    return response


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return HttpResponse("ok", content_type="text/plain")


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Agents get a problem document, people the page."""
    if request.path.startswith("/api/"):
        return problem(404, "Not found", f"nothing at {request.path}")
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        return problem(500, "Server error", "the desk failed to answer; the error is logged")
    return defaults.server_error(request)


@require_GET
def openapi_json(request: HttpRequest) -> HttpResponse:
    return JsonResponse(document(), json_dumps_params={"indent": 2})


@require_GET
def api_docs(request: HttpRequest) -> HttpResponse:
    return render(request, "approvals/api.html", {"spec": document()})


def _explain_form(query: Any) -> tuple[Proposal | None, dict[str, str]]:
    """A proposal from the explain form's fields, or the errors naming the bad ones."""
    errors: dict[str, str] = {}
    tool, verb = query.get("tool", "").strip(), query.get("verb", "").strip()
    if not tool:
        errors["tool"] = "name the tool, e.g. create_order"
    if verb not in VERBS:
        errors["verb"] = f"choose one of {', '.join(VERBS)}"
    amount = None
    if query.get("amount", "").strip():
        try:
            amount = Decimal(query["amount"].strip())
        except InvalidOperation:
            amount = None
        if amount is None or not amount.is_finite() or abs(amount) >= 10**14:
            errors["amount"] = f"{query['amount']!r} is not an amount"
            amount = None
    counts: dict[str, int | None] = {}
    for name in ("records", "population"):
        raw = query.get(name, "").strip()
        counts[name] = whole_number(raw, high=MAX_INTEGER)
        if raw and counts[name] is None:
            errors[name] = f"{raw!r} is not a whole number"
    if errors:
        return None, errors
    targets = tuple(t.strip() for t in query.get("targets", "").split(",") if t.strip())
    proposal = Proposal(
        agent=query.get("agent", "").strip() or "*",
        tool=tool,
        verb=verb,
        amount=amount,
        blast_records=counts["records"],
        blast_population=counts["population"],
        target_ids=targets,
        has_snapshot=bool(query.get("snapshot")),
        has_compensation=bool(query.get("compensation")),
    )
    return proposal, errors


@require_GET
@require("view_desk")
def policies(request: HtmxHttpRequest) -> HttpResponse:
    domains = list(Domain.objects.all())
    selected = next((d for d in domains if d.slug == request.GET.get("domain")), None)
    selected = selected or (domains[0] if domains else None)
    context: dict[str, Any] = {
        "domains": domains,
        "domain": selected,
        "form": request.GET,
        "verbs": VERBS,
    }
    if selected is not None:
        document, version = policy_current(selected)
        context.update(
            document=document,
            version=version,
            history=selected.policy_versions.order_by("-version")[:10],
        )
        if "tool" in request.GET:
            proposal, errors = _explain_form(request.GET)
            context["errors"] = errors
            if proposal is not None:
                context["verdict"], context["trace"] = policy_explain(
                    domain=selected, proposal=proposal
                )
    template = "approvals/policies.html#explain" if request.htmx else "approvals/policies.html"
    return render(request, template, context, status=400 if context.get("errors") else 200)


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
    template = "approvals/queue.html#groups" if request.htmx else "approvals/queue.html"
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
        "compensation_params": json.dumps((action.compensation or {}).get("params", {})),
        "targets_shown": action.target_ids[:50],
        "targets_more": max(0, len(action.target_ids) - 50),
    }
    return render(request, "approvals/review.html", context)


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
        return render(request, "approvals/review.html#decision",
                      decision_context(decision.action, request.user))  # fmt: skip
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
        return render(request, "approvals/review.html#decision",
                      decision_context(action, request.user, error), status=status)  # fmt: skip
    messages.error(request, error)
    return redirect("review", action_id=action.pk)


@require_GET
@require("view_desk")
def killswitches(request: HtmxHttpRequest) -> HttpResponse:
    domains = list(Domain.objects.all())
    switches = {s.scope: s for s in KillSwitch.objects.all()}
    rows = [(GLOBAL, "Every domain", switches.get(GLOBAL))] + [
        (d.slug, d.name, switches.get(d.slug)) for d in domains
    ]
    history = KillSwitchChange.objects.select_related("switch")[:50]
    return render(
        request,
        "approvals/killswitches.html",
        {
            "rows": rows,
            "history": history,
            "can_operate": request.user.has_perm(perm("operate_killswitch")),
            "agents": Agent.objects.filter(quarantined_at=None).values_list("name", flat=True),
            "quarantined": Agent.objects.exclude(quarantined_at=None).order_by("-quarantined_at"),
        },
    )


@require_POST
@require("operate_killswitch")
def killswitch_change(request: HtmxHttpRequest, scope: str) -> HttpResponse:
    verb = request.POST.get("verb", "")
    if verb not in ("engage", "release"):
        messages.error(request, "Choose engage or release.")
        return redirect("killswitches")
    if request.POST.get("confirm") != scope:
        messages.error(request, f"Type {scope} in the confirmation box to {verb} that switch.")
        return redirect("killswitches")
    try:
        change = killswitch_set(
            scope=scope,
            engaged=verb == "engage",
            actor=Actor.user(request.user),
            reason=request.POST.get("reason", ""),
        )
    except Refused as exc:
        messages.error(request, exc.detail)
        return redirect("killswitches")
    state = "ENGAGED" if change.engaged else "released"
    messages.success(request, f"Kill switch {scope} {state}.")
    return redirect("killswitches")


@require_POST
@require("operate_killswitch")
def quarantine(request: HtmxHttpRequest) -> HttpResponse:
    agent = request.POST.get("agent", "")
    if not agent or request.POST.get("confirm") != agent:
        messages.error(request, "Choose the agent and type its name again to confirm.")
        return redirect("killswitches")
    try:
        revoked, cancelled = agent_quarantine(
            agent_name=agent, actor=Actor.user(request.user), reason=request.POST.get("reason", "")
        )
    except Refused as exc:
        messages.error(request, exc.detail)
        return redirect("killswitches")
    messages.success(
        request,
        f"Agent {agent} quarantined: {revoked} tokens revoked, {cancelled} actions cancelled.",
    )
    return redirect("killswitches")


AGENTS_PAGE_SIZE = 50


@require_GET
@require("view_desk")
def agents(request: HttpRequest) -> HttpResponse:
    page = Paginator(agents_listed(), AGENTS_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "approvals/agents.html",
        {
            "page": page,
            "rows": agent_rows(page.object_list),
            "summary": agents_summary(),
            "can_quarantine": request.user.has_perm(perm("operate_killswitch")),
            "can_release": request.user.has_perm(perm("release_agent")),
        },
    )


def _back_to_agents(request: HttpRequest, name: str) -> HttpResponse:
    page = whole_number(request.POST.get("page", ""), low=2, high=10**6)
    query = f"?page={page}" if page else ""
    return redirect(f"{reverse('agents')}{query}#agent-{name}")


@require_POST
@require("operate_killswitch")
def agents_quarantine(request: HttpRequest, name: str) -> HttpResponse:
    if request.POST.get("confirm") != name:
        messages.error(request, f"Type {name} in the confirmation box to quarantine it.")
        return _back_to_agents(request, name)
    try:
        revoked, cancelled = agent_quarantine(
            agent_name=name, actor=Actor.user(request.user), reason=request.POST.get("reason", "")
        )
    except Refused as exc:
        messages.error(request, exc.detail)
        return _back_to_agents(request, name)
    messages.success(
        request,
        f"Agent {name} quarantined: {revoked} tokens revoked, {cancelled} actions cancelled.",
    )
    return _back_to_agents(request, name)


@require_POST
@require("release_agent")
def agents_release(request: HttpRequest, name: str) -> HttpResponse:
    try:
        agent_release(
            agent_name=name, actor=Actor.user(request.user), reason=request.POST.get("reason", "")
        )
    except Refused as exc:
        messages.error(request, exc.detail)
        return _back_to_agents(request, name)
    messages.success(
        request, f"Agent {name} released. Its tokens stay revoked: issue new ones for it to act."
    )
    return _back_to_agents(request, name)


# -- Rollbacks and sessions -----------------------------------------------------------------

STEPS_PAGE_SIZE = 50


def _when(value: str, field: str) -> datetime | None:
    if not value:
        return None
    parsed = parse_datetime(value)
    if parsed is None:
        raise Refused(422, "Not a time", f"{field}: {value!r} is not a date and time "
                      "(YYYY-MM-DDTHH:MM)", field=field)  # fmt: skip
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed)


def _selection(form: Any) -> Selection:
    ids = tuple(part for part in form.get("actions", "").replace(",", " ").split() if part)
    for value in ids:
        try:
            uuid.UUID(value)
        except ValueError:
            raise Refused(422, "Not an action id", f"actions: {value!r} is not an action id",
                          field="actions") from None  # fmt: skip
    return Selection(
        scope=form.get("scope", ""),
        session=form.get("session", "").strip(),
        agent=form.get("agent", "").strip(),
        domain=form.get("domain", "").strip(),
        since=_when(form.get("since", ""), "since"),
        until=_when(form.get("until", ""), "until"),
        action_ids=ids,
    )


def _rollbacks_page(request: HttpRequest, form: Any, error: str = "", status: int = 200
                    ) -> HttpResponse:  # fmt: skip
    return render(
        request,
        "approvals/rollbacks.html",
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
        plan = plan_create(actor=Actor.user(request.user), selection=_selection(request.POST),
                           reason=request.POST.get("reason", ""))  # fmt: skip
    except Refused as exc:
        field = f"{exc.field}: " if exc.field and not exc.detail.startswith(exc.field) else ""
        return _rollbacks_page(request, request.POST, field + exc.detail, exc.status)
    return redirect("rollback", plan_id=plan.pk)


@require_GET
@require("view_desk")
def rollback(request: HtmxHttpRequest, plan_id: uuid.UUID) -> HttpResponse:
    plan = get_object_or_404(RollbackPlan.objects.select_related("domain"), pk=plan_id)
    pages = max(1, -(-plan.total // STEPS_PAGE_SIZE))
    return render(request, "approvals/rollback_plan.html",
                  {**plan_context(plan, request.user), "pages": range(1, pages + 1)})  # fmt: skip


@require_GET
@require("view_desk")
def rollback_steps(request: HtmxHttpRequest, plan_id: uuid.UUID) -> HttpResponse:
    """One page of a plan's steps, each target read now, drift marked."""
    plan = get_object_or_404(RollbackPlan, pk=plan_id)
    page = whole_number(request.GET.get("page", "1"), low=1, high=10**6) or 1
    start = (page - 1) * STEPS_PAGE_SIZE
    steps = list(plan.steps.select_related("action", "action__domain")
                 .order_by("position")[start:start + STEPS_PAGE_SIZE])  # fmt: skip
    current = read_current(steps)
    rows = []
    for step in steps:
        now, error = current.get(step.pk, (None, "not read: manual step"))
        rows.append({"step": step, "now": now, "error": error,
                     "drift": not error and drifted(step, now)})  # fmt: skip
    return render(request, "approvals/rollback_plan.html#steps",
                  {"plan": plan, "rows": rows, "page": page})  # fmt: skip


ROLLBACK_VERBS = {
    "start": plan_start,
    "confirm": plan_confirm,
    "pause": plan_pause,
    "resume": plan_resume,
}


def _plan_answer(request: HtmxHttpRequest, plan_id: uuid.UUID, error: Refused | None
                 ) -> HttpResponse:  # fmt: skip
    """htmx gets the plan's progress section back (with the error, if any); a plain form
    post goes back to the plan page."""
    if request.htmx:
        plan = get_object_or_404(RollbackPlan.objects.select_related("domain"), pk=plan_id)
        context = {**plan_context(plan, request.user), "error": error.detail if error else ""}
        return render(request, "approvals/rollback_plan.html#progress", context,
                      status=error.status if error else 200)  # fmt: skip
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
        step_resolve(step_id=step_id, actor=Actor.user(request.user), decision=decision,
                     state=state, note=request.POST.get("note", ""))  # fmt: skip
    except Refused as exc:
        return _plan_answer(request, plan_id, exc)
    return _plan_answer(request, plan_id, None)


@require_GET
@require("view_desk")
def sessions(request: HttpRequest) -> HttpResponse:
    recent = (
        AgentSession.objects.select_related("agent", "domain")
        .annotate(actions_count=Count("actions"))
        .order_by("-created_at")[:100]
    )
    return render(request, "approvals/sessions.html", {"sessions": recent})


@require_GET
@require("view_desk")
def session(request: HttpRequest, session_id: int) -> HttpResponse:
    agent_session = get_object_or_404(AgentSession.objects.select_related("agent", "domain"),
                                      pk=session_id)  # fmt: skip
    return render(
        request,
        "approvals/session.html",
        {
            "session": agent_session,
            "entries": session_timeline(agent_session),
            "can_run": request.user.has_perm(perm("run_rollback")),
            "can_export": request.user.has_perm(perm("export_audit")),
        },
    )


@require_POST
@require("export_audit")
def session_export(request: HttpRequest, session_id: int) -> HttpResponseBase:
    agent_session = get_object_or_404(AgentSession.objects.select_related("agent", "domain"),
                                      pk=session_id)  # fmt: skip
    lines = timeline_export(session=agent_session, actor=Actor.user(request.user))
    response = StreamingHttpResponse(lines, content_type="application/jsonl")
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", agent_session.external_id)
    name = f"session-{agent_session.agent.name}-{safe}.jsonl"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
