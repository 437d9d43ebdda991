from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from pydantic import ValidationError

from approvals.agents import agent_save, token_revoke
from approvals.audit import Actor
from approvals.core import PERMISSIONS, Refused, whole_number
from approvals.models import (
    Agent,
    AgentToken,
    AuditEvent,
    ChainVerification,
    Connector,
    Domain,
    PolicyVersion,
    Tier,
    Webhook,
    WebhookDelivery,
)
from approvals.notifications import webhook_delete, webhook_save
from approvals.policy import PolicyDocument, policy_export, policy_publish
from approvals.queue import TIER_FIELDS, tier_check, tier_delete, tier_save
from approvals.rollbacks import connector_check, connector_delete, connector_save

# Tiers, webhooks and connectors are saved and deleted by their services, which audit each
# change. Bulk deletion would skip delete_model, and so the services: their admins have no
# actions.

DECIDING = [(codename, codename) for codename, _ in PERMISSIONS if codename.startswith("decide_")]


class TierForm(forms.ModelForm):
    decide_permission = forms.ChoiceField(choices=DECIDING)
    senior_permission = forms.ChoiceField(choices=[("", "none"), *DECIDING], required=False)

    class Meta:
        model = Tier
        fields = list(TIER_FIELDS)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        checked = ("approvals_needed", "sla_seconds", "decide_permission")
        if any(name not in cleaned for name in checked):
            return cleaned  # the field's own error says what is wrong
        try:
            tier_check(
                approvals_needed=cleaned["approvals_needed"],
                sla_seconds=cleaned["sla_seconds"],
                decide_permission=cleaned["decide_permission"],
                senior_permission=cleaned.get("senior_permission") or "",
            )
        except Refused as exc:
            self.add_error(exc.field if exc.field in self.fields else None, exc.detail)
        return cleaned


@admin.register(Tier)
class TierAdmin(admin.ModelAdmin):
    """Without rows, a domain uses the default tiers (1 approver / 15 min, two with one
    senior / 30 min, an incident commander / 60 min)."""

    form = TierForm
    list_display = list(TIER_FIELDS)
    list_filter = ["domain"]
    actions = None

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        tier_save(tier=obj, actor=Actor.user(request.user), changed=form.changed_data)

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        tier_delete(tier=obj, actor=Actor.user(request.user))


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin):
    list_display = ["domain", "url", "active", "created_at"]
    list_filter = ["domain", "active"]
    actions = None

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        webhook_save(webhook=obj, actor=Actor.user(request.user), changed=form.changed_data)

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        webhook_delete(webhook=obj, actor=Actor.user(request.user))


class ConnectorForm(forms.ModelForm):
    class Meta:
        model = Connector
        fields = ["domain", "tool", "kind", "spec", "secret", "timeout_seconds", "max_attempts"]
        widgets = {"secret": forms.PasswordInput(render_value=True)}

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        try:
            connector_check(
                kind=cleaned.get("kind", ""),
                spec=cleaned.get("spec") or {},
                secret=cleaned.get("secret", ""),
            )
        except Refused as exc:
            field = "secret" if exc.field == "secret" else "spec"
            raise forms.ValidationError({field: exc.detail}) from None
        return cleaned


@admin.register(Connector)
class ConnectorAdmin(admin.ModelAdmin):
    form = ConnectorForm
    list_display = ["domain", "tool", "kind", "timeout_seconds", "max_attempts"]
    list_filter = ["domain", "kind"]
    actions = None

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        connector_save(
            connector=obj,
            domain=obj.domain,
            tool=obj.tool,
            kind=obj.kind,
            spec=obj.spec,
            secret=obj.secret,
            timeout_seconds=obj.timeout_seconds,
            max_attempts=obj.max_attempts,
            actor=Actor.user(request.user),
        )

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        connector_delete(connector=obj, actor=Actor.user(request.user))


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


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "created_at"]
    search_fields = ["name"]
    fields = ["name", "description", "owner"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["name"] if obj else []

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # its actions and audit events refer to it

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        agent_save(agent=obj, actor=Actor.user(request.user))


@admin.register(AgentToken)
class AgentTokenAdmin(ReadOnlyAdmin):
    """Tokens are issued with `manage.py issue_token` (the secret is shown once, there)."""

    list_display = ["prefix", "agent", "domain", "scopes", "expires_at", "revoked_at"]
    list_filter = ["domain", "revoked_at"]
    search_fields = ["prefix", "agent__name"]
    exclude = ["digest"]
    actions = ["revoke"]

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[AgentToken]) -> None:
        for token in queryset:
            token_revoke(prefix=token.prefix, actor=Actor.user(request.user))
        self.message_user(request, f"{queryset.count()} tokens revoked")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Needed for the revoke action; the form itself shows every field read-only.
        return bool(request.user.is_superuser)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in AgentToken._meta.fields if f.name != "digest"]


class PolicyVersionForm(forms.ModelForm):
    """A new version: the rules as JSON, validated as the policy files are."""

    rules = forms.JSONField(
        initial=list, help_text="JSON list of rules, as `manage.py policy export` writes them"
    )
    tools = forms.JSONField(
        initial=list,
        required=False,
        help_text="the tool registry: JSON list of tools, as `manage.py tools export` writes them",
    )
    unregistered = forms.ChoiceField(
        choices=[("escalate", "escalate"), ("deny", "deny"), ("allow", "allow (the rules alone)")],
        initial="escalate",
        required=False,
        help_text="the least caution for a tool not in the registry",
    )

    class Meta:
        model = PolicyVersion
        fields = [
            "domain",
            "rules",
            "default_outcome",
            "default_tier",
            "tools",
            "unregistered",
            "comment",
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        try:
            self.document = PolicyDocument.model_validate(
                {
                    "rules": data.get("rules"),
                    "default_outcome": data.get("default_outcome"),
                    "default_tier": data.get("default_tier")
                    if data.get("default_outcome") == "escalate"
                    else None,
                    "tools": data.get("tools") or [],
                    "unregistered": data.get("unregistered") or "escalate",
                    "comment": data.get("comment", ""),
                }
            )
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(p) for p in error["loc"])
                self.add_error(None, f"{where}: {error['msg']}")
        return data


@admin.register(PolicyVersion)
class PolicyVersionAdmin(admin.ModelAdmin):
    """Versions are immutable: "Add" publishes the next version of a domain's policy."""

    form = PolicyVersionForm
    list_display = ["domain", "version", "default_outcome", "created_by", "created_at", "comment"]
    list_filter = ["domain"]

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        # ?domain=<id> starts the new version from the current one.
        initial: dict[str, Any] = dict(super().get_changeform_initial_data(request))
        domain_id = whole_number(str(initial.get("domain", "")))
        domain = Domain.objects.filter(pk=domain_id).first() if domain_id is not None else None
        if domain is not None:
            exported = policy_export(domain)
            initial["rules"] = exported["rules"]
            initial["default_outcome"] = exported["default_outcome"]
            initial["tools"] = exported["tools"]
            initial["unregistered"] = exported["unregistered"]
        return initial

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        published = policy_publish(
            domain=form.cleaned_data["domain"],
            document=form.document,
            actor=Actor.user(request.user),
        )
        obj.pk, obj.version = published.pk, published.version

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "event", "webhook", "state", "attempts", "last_error"]
    list_filter = ["state", "event"]
