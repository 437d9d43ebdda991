from __future__ import annotations

import json
import uuid

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from approvals.audit import Actor, audit_record
from approvals.models import Domain


@csrf_exempt
@require_POST
def insert(request: HttpRequest) -> JsonResponse:
    """A JSON POST that writes one plain row."""
    body = json.loads(request.body)
    domain = Domain.objects.create(slug=uuid.uuid4().hex[:40], name=body["tool"][:100])
    return JsonResponse({"id": domain.pk}, status=201)


@csrf_exempt
@require_POST
def audited(request: HttpRequest) -> JsonResponse:
    """A JSON POST that appends one audit event, as every change of state does."""
    body = json.loads(request.body)
    with transaction.atomic():
        event = audit_record(actor=Actor.system("bench"), action="bench.insert", data=body)
    return JsonResponse({"seq": event.seq}, status=201)


@csrf_exempt
@require_POST
def bare(request: HttpRequest) -> JsonResponse:
    """A JSON POST that reads its body and answers, touching nothing else: the most any
    endpoint of this project can serve through the same servers and middleware."""
    body = json.loads(request.body)
    return JsonResponse({"tool": body.get("tool")}, status=200)


urlpatterns = [
    path("bench/json", bare),
    path("bench/insert", insert),
    path("bench/audited", audited),
    path("", include("incidentdesk.urls")),
]
