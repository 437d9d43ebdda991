from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from django.core.serializers.json import DjangoJSONEncoder
from django.db import (
    transaction,
)
from django.db.models import QuerySet

from approvals.audit.record import Actor, audit_record, audit_seal, timestamp_text
from approvals.models import AuditEvent


@dataclass(frozen=True)
class AuditFilters:
    action: str = ""
    actor: str = ""
    domain: str = ""
    object_id: str = ""
    since: datetime | None = None
    until: datetime | None = None


def audit_events(filters: AuditFilters) -> QuerySet[AuditEvent]:
    events = AuditEvent.objects.all()
    if filters.action:
        events = events.filter(action__startswith=filters.action)
    if filters.actor:
        events = events.filter(actor=filters.actor)
    if filters.domain:
        events = events.filter(domain=filters.domain)
    if filters.object_id:
        events = events.filter(object_id=filters.object_id)
    if filters.since:
        events = events.filter(created_at__gte=filters.since)
    if filters.until:
        events = events.filter(created_at__lt=filters.until)
    return events


def export_lines(events: QuerySet[AuditEvent]) -> Iterator[str]:
    """JSON lines, oldest first, with the hashes, so a reader can re-check the chain."""
    columns = [f.attname for f in AuditEvent._meta.concrete_fields if f.attname != "id"]
    for row in events.exclude(seq=None).order_by("seq").values(*columns).iterator(chunk_size=2000):
        row["created_at"] = timestamp_text(row["created_at"])
        yield json.dumps(row, sort_keys=True, ensure_ascii=False, cls=DjangoJSONEncoder) + "\n"


def audit_export(*, actor: Actor, filters: AuditFilters) -> Iterator[str]:
    """Record the export now, and return the matching events as JSON lines."""
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="audit.exported",
            summary="Audit trail exported",
            data={name: str(value) for name, value in vars(filters).items() if value},
        )
    audit_seal()
    return export_lines(audit_events(filters))
