from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from approvals.models import AuditEvent, ChainVerification, Domain


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Domain)
class DomainAdmin(ReadOnlyAdmin):
    """Domains are created through services, so that each creation is audited."""

    list_display = ["slug", "name", "created_at"]
    search_fields = ["slug", "name"]


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ["seq", "created_at", "actor", "action", "domain", "summary"]
    list_filter = ["action", "domain", "actor_kind"]
    search_fields = ["actor", "object_id", "summary"]


@admin.register(ChainVerification)
class ChainVerificationAdmin(ReadOnlyAdmin):
    list_display = ["id", "state", "requested_by", "created_at", "checked", "first_broken_seq"]
