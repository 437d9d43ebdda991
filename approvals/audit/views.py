from __future__ import annotations

import re
from datetime import datetime, time, timedelta

from django.db.models import Count
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.dateparse import parse_date
from django.views.decorators.http import require_GET, require_POST

from approvals.audit.export import AuditFilters, audit_events
from approvals.audit.export import audit_export as audit_export_lines
from approvals.audit.record import Actor
from approvals.audit.timeline import session_timeline, timeline_export
from approvals.audit.verify import latest_verification, verification_request
from approvals.core import (
    HtmxHttpRequest,
    perm,
    require,
    whole_number,
)
from approvals.models import (
    AgentSession,
    Domain,
)

AUDIT_PAGE_SIZE = 50


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
    events = audit_events(filters)
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
        "verification": latest_verification(),
        "can_verify": request.user.has_perm(perm("verify_audit")),
        "can_export": request.user.has_perm(perm("export_audit")),
    }
    template = "approvals/audit/audit.html#events" if request.htmx else "approvals/audit/audit.html"
    return render(request, template, context, status=400 if errors else 200)


@require_POST
@require("verify_audit")
def audit_verify(request: HtmxHttpRequest) -> HttpResponse:
    verification = verification_request(actor=Actor.user(request.user))
    if request.htmx:
        return render(
            request,
            "approvals/audit/audit.html#chain_status",
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
    lines = audit_export_lines(actor=Actor.user(request.user), filters=filters)
    response = StreamingHttpResponse(lines, content_type="application/jsonl")
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.jsonl"'
    return response


@require_GET
@require("view_desk")
def sessions(request: HttpRequest) -> HttpResponse:
    recent = (
        AgentSession.objects.select_related("agent", "domain")
        .annotate(actions_count=Count("actions"))
        .order_by("-created_at")[:100]
    )
    return render(request, "approvals/audit/sessions.html", {"sessions": recent})


@require_GET
@require("view_desk")
def session(request: HttpRequest, session_id: int) -> HttpResponse:
    agent_session = get_object_or_404(
        AgentSession.objects.select_related("agent", "domain"), pk=session_id
    )
    return render(
        request,
        "approvals/audit/session.html",
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
    agent_session = get_object_or_404(
        AgentSession.objects.select_related("agent", "domain"), pk=session_id
    )
    lines = timeline_export(session=agent_session, actor=Actor.user(request.user))
    response = StreamingHttpResponse(lines, content_type="application/jsonl")
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", agent_session.external_id)
    name = f"session-{agent_session.agent.name}-{safe}.jsonl"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
