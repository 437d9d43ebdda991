from __future__ import annotations

from typing import Any

from django.contrib.auth import views as auth_views
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views import defaults
from django.views.decorators.http import require_GET

from approvals.audit import (
    Actor,
    audit_record,
    latest_verification,
)
from approvals.core import (
    problem,
    require,
)
from approvals.desk.operators import operator_signed_out
from approvals.models import (
    AuditEvent,
    Domain,
)
from approvals.notifications import failed_deliveries
from incidentdesk.health import readiness


class LoginView(auth_views.LoginView):
    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        with transaction.atomic():
            audit_record(
                actor=Actor.user(form.get_user()), action="auth.login", summary="Signed in"
            )
        return response


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
        "approvals/desk/dashboard.html",
        {
            "domains": Domain.objects.all(),
            "recent_events": AuditEvent.objects.all()[:8],
            "verification": latest_verification(),
            "failed_notifications": failed_deliveries(5),
        },
    )


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """The process is alive and answers (nothing else is asked: see /readyz)."""
    return HttpResponse("ok", content_type="text/plain")


@require_GET
def readyz(request: HttpRequest) -> HttpResponse:
    """Ready to work: the database and Redis answer, and a worker and beat beat. The answer
    names what fails."""
    checks = readiness()
    ready = all(check.ok for check in checks)
    body = {
        "ready": ready,
        "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks},
        "failing": [f"{c.name}: {c.detail}" for c in checks if not c.ok],
    }
    return JsonResponse(body, status=200 if ready else 503)


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Agents get a problem document, people the page."""
    if request.path.startswith("/api/"):
        return problem(404, "Not found", f"nothing at {request.path}")
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        return problem(500, "Server error", "the desk failed to answer; the error is logged")
    return defaults.server_error(request)
