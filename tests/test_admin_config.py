"""Tiers, webhooks and connectors edited in the admin are saved by their services: checked the
same way, audited with the same events, in the same transaction as the change."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import AbstractUser
from django.test import Client

from approvals.audit import Actor
from approvals.core import Refused
from approvals.models import AuditEvent, Connector, Domain, Tier, Webhook
from approvals.notifications import webhook_delete, webhook_save
from approvals.queue import tier_check, tier_delete, tier_save
from approvals.rollbacks import connector_delete, connector_save
from tests.agents import demo_domain

pytestmark = pytest.mark.django_db

ADMIN_ACTOR = Actor("user", "ari-admin")

HOOK_URL = "https://hooks.example.com/services/T000/B000/s3cr3tT0k3n?key=hunter2"

SECRET = "k3y-th4t-s1gns-r3qu3sts"

SPEC = {"read": {"method": "GET", "url": "http://127.0.0.1:9/records/{target}"}}


@pytest.fixture
def admin_client(admin_operator: AbstractUser, login: Callable[[AbstractUser], Client]) -> Client:
    return login(admin_operator)


@pytest.fixture
def billing() -> Domain:
    return demo_domain("billing")


def posted(client: Client, url: str, data: dict[str, Any]) -> None:
    """POST an admin form that must be accepted (the admin redirects after saving)."""
    response = client.post(url, data)
    errors = response.context["adminform"].form.errors if response.context else None
    assert response.status_code == 302, errors


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action))


def tier_form(domain: Domain, **overrides: Any) -> dict[str, Any]:
    return {
        "domain": domain.pk,
        "level": 2,
        "approvals_needed": 2,
        "decide_permission": "decide_tier1",
        "senior_permission": "decide_tier2",
        "sla_seconds": 600,
        **overrides,
    }


def webhook_form(domain: Domain, **overrides: Any) -> dict[str, Any]:
    return {"domain": domain.pk, "url": HOOK_URL, "active": "on", **overrides}


def new_tier(domain: Domain, **overrides: Any) -> Tier:
    return Tier(**{**tier_form(domain, **overrides), "domain": domain})


def connector_form(domain: Domain, **overrides: Any) -> dict[str, Any]:
    return {
        "domain": domain.pk,
        "tool": "update_discount",
        "kind": "http",
        "spec": json.dumps(SPEC),
        "secret": SECRET,
        "timeout_seconds": 5.0,
        "max_attempts": 3,
        **overrides,
    }


def test_adding_changing_and_deleting_a_tier_in_the_admin_writes_tier_events(
    admin_client: Client, billing: Domain
) -> None:
    posted(admin_client, "/admin/approvals/tier/add/", tier_form(billing))
    tier = Tier.objects.get()
    (created,) = events("tier.created")
    assert (created.actor, created.domain, created.object_type) == ("ari-admin", "billing", "tier")
    assert created.object_id == str(tier.pk)
    assert created.data == {
        "domain": "billing",
        "level": 2,
        "approvals_needed": 2,
        "decide_permission": "decide_tier1",
        "senior_permission": "decide_tier2",
        "sla_seconds": 600,
    }

    url = f"/admin/approvals/tier/{tier.pk}/change/"
    posted(admin_client, url, tier_form(billing, sla_seconds=900))
    tier.refresh_from_db()
    assert tier.sla_seconds == 900
    (changed,) = events("tier.changed")
    assert changed.data == {"sla_seconds": 900}
    assert changed.summary == "Tier 2 of billing changed: sla_seconds"

    posted(admin_client, f"/admin/approvals/tier/{tier.pk}/delete/", {"post": "yes"})
    assert not Tier.objects.exists()
    (deleted,) = events("tier.deleted")
    assert deleted.object_id == str(tier.pk) and deleted.data["sla_seconds"] == 900
    assert not AuditEvent.objects.filter(action__startswith="admin.").exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("approvals_needed", 0, "from 1 to 5 approvals"),
        ("approvals_needed", 6, "from 1 to 5 approvals"),
        ("sla_seconds", 59, "shorter than a minute"),
        ("decide_permission", "decide_everything", "valid choice"),
        ("senior_permission", "manage_desk", "valid choice"),
    ],
)
def test_an_invalid_tier_is_refused_in_the_admin_and_nothing_is_written(
    admin_client: Client, billing: Domain, field: str, value: Any, message: str
) -> None:
    before = AuditEvent.objects.count()
    response = admin_client.post("/admin/approvals/tier/add/", tier_form(billing, **{field: value}))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == [field] and message in errors[field][0]
    assert not Tier.objects.exists()
    assert AuditEvent.objects.count() == before


def test_an_invalid_change_of_a_tier_leaves_it_as_it_was(
    admin_client: Client, billing: Domain
) -> None:
    tier = tier_save(tier=new_tier(billing), actor=ADMIN_ACTOR)
    before = AuditEvent.objects.count()
    response = admin_client.post(
        f"/admin/approvals/tier/{tier.pk}/change/", tier_form(billing, sla_seconds=30)
    )
    assert response.status_code == 200
    assert "sla_seconds" in response.context["adminform"].form.errors
    tier.refresh_from_db()
    assert tier.sla_seconds == 600 and AuditEvent.objects.count() == before


def test_adding_changing_and_deleting_a_webhook_in_the_admin_records_its_host_only(
    admin_client: Client, billing: Domain
) -> None:
    posted(admin_client, "/admin/approvals/webhook/add/", webhook_form(billing))
    hook = Webhook.objects.get()
    assert hook.url == HOOK_URL
    (created,) = events("webhook.created")
    assert created.actor == "ari-admin" and created.object_id == str(hook.pk)
    assert created.data == {"domain": "billing", "url": "hooks.example.com", "active": True}

    rotated = HOOK_URL.replace("s3cr3tT0k3n", "n3wS3cr3t")
    url = f"/admin/approvals/webhook/{hook.pk}/change/"
    posted(admin_client, url, webhook_form(billing, url=rotated, active=""))
    hook.refresh_from_db()
    assert (hook.url, hook.active) == (rotated, False)
    (changed,) = events("webhook.changed")
    assert changed.data == {"url": "hooks.example.com", "active": False}

    posted(admin_client, f"/admin/approvals/webhook/{hook.pk}/delete/", {"post": "yes"})
    assert not Webhook.objects.exists()
    (deleted,) = events("webhook.deleted")
    assert deleted.data["url"] == "hooks.example.com"

    trail = json.dumps(list(AuditEvent.objects.values("summary", "data")))
    for secret in ("s3cr3tT0k3n", "n3wS3cr3t", "hunter2", "/services/"):
        assert secret not in trail


def test_adding_changing_and_deleting_a_connector_in_the_admin_never_records_its_secret(
    admin_client: Client, billing: Domain
) -> None:
    posted(admin_client, "/admin/approvals/connector/add/", connector_form(billing))
    connector = Connector.objects.get()
    assert connector.secret == SECRET
    (created,) = events("connector.created")
    assert created.actor == "ari-admin" and created.object_id == str(connector.pk)
    assert created.data["spec"] == SPEC and created.data["tool"] == "update_discount"

    url = f"/admin/approvals/connector/{connector.pk}/change/"
    posted(admin_client, url, connector_form(billing, secret=SECRET + "-rotated"))
    (changed,) = events("connector.changed")
    assert changed.summary.endswith("changed: secret (http)")

    posted(admin_client, f"/admin/approvals/connector/{connector.pk}/delete/", {"post": "yes"})
    assert not Connector.objects.exists()
    (deleted,) = events("connector.deleted")
    assert deleted.object_id == str(connector.pk)

    trail = json.dumps(list(AuditEvent.objects.values()), default=str)
    assert SECRET not in trail


def test_changing_a_connectors_tool_in_the_admin_leaves_one_row(
    admin_client: Client, billing: Domain
) -> None:
    connector = connector_save(
        domain=billing,
        tool="update_discount",
        kind="http",
        spec=SPEC,
        secret=SECRET,
        actor=ADMIN_ACTOR,
    )
    url = f"/admin/approvals/connector/{connector.pk}/change/"
    posted(admin_client, url, connector_form(billing, tool="set_discount"))
    assert list(Connector.objects.values_list("pk", "tool")) == [(connector.pk, "set_discount")]
    (changed,) = events("connector.changed")
    assert changed.object_id == str(connector.pk) and changed.data["tool"] == "set_discount"


@pytest.mark.parametrize("model", ["tier", "webhook", "connector"])
def test_bulk_deletion_is_not_offered_so_deletions_go_through_the_service(
    admin_client: Client, billing: Domain, model: str
) -> None:
    rows = {
        "tier": lambda: tier_save(tier=new_tier(billing), actor=ADMIN_ACTOR),
        "webhook": lambda: Webhook.objects.create(domain=billing, url=HOOK_URL),
        "connector": lambda: Connector.objects.create(domain=billing, tool="t", spec=SPEC),
    }
    row = rows[model]()
    admin_client.post(
        f"/admin/approvals/{model}/",
        {"action": "delete_selected", "_selected_action": [row.pk], "post": "yes"},
    )
    assert type(row).objects.filter(pk=row.pk).exists()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"approvals_needed": 0}, "approvals_needed"),
        ({"approvals_needed": 6}, "approvals_needed"),
        ({"sla_seconds": 59}, "sla_seconds"),
        ({"decide_permission": "decide_everything"}, "decide_permission"),
        ({"decide_permission": "manage_desk"}, "decide_permission"),
        ({"senior_permission": "view_audit"}, "senior_permission"),
    ],
)
def test_tier_check_refusals_name_the_field(changes: dict[str, Any], field: str) -> None:
    values = {
        "approvals_needed": 1,
        "sla_seconds": 60,
        "decide_permission": "decide_tier3",
        "senior_permission": "",
        **changes,
    }
    with pytest.raises(Refused) as refused:
        tier_check(**values)
    assert refused.value.status == 422 and refused.value.field == field


def test_tier_check_accepts_the_edges_of_a_workable_tier() -> None:
    tier_check(approvals_needed=1, sla_seconds=60, decide_permission="decide_tier1")
    tier_check(
        approvals_needed=5,
        sla_seconds=60,
        decide_permission="decide_tier1",
        senior_permission="decide_tier3",
    )


def test_tier_save_refuses_a_second_tier_at_one_level(billing: Domain) -> None:
    tier_save(tier=new_tier(billing), actor=ADMIN_ACTOR)
    with pytest.raises(Refused) as refused:
        tier_save(tier=new_tier(billing), actor=ADMIN_ACTOR)
    assert refused.value.field == "level"
    assert Tier.objects.count() == 1 and len(events("tier.created")) == 1


def test_tier_save_records_the_fields_that_differ_from_the_stored_row(billing: Domain) -> None:
    tier = tier_save(tier=new_tier(billing), actor=ADMIN_ACTOR)
    tier_save(tier=tier, actor=ADMIN_ACTOR)
    assert not events("tier.changed")
    tier.approvals_needed, tier.senior_permission = 3, ""
    tier_save(tier=tier, actor=ADMIN_ACTOR)
    (changed,) = events("tier.changed")
    assert changed.data == {"approvals_needed": 3, "senior_permission": ""}


def test_a_refused_tier_is_not_saved(billing: Domain) -> None:
    with pytest.raises(Refused):
        tier_save(tier=new_tier(billing, sla_seconds=10), actor=ADMIN_ACTOR)
    assert not Tier.objects.exists() and not events("tier.created")


def test_connector_save_given_a_row_saves_that_row(billing: Domain) -> None:
    first = connector_save(
        domain=billing,
        tool="update_discount",
        kind="http",
        spec=SPEC,
        secret=SECRET,
        actor=ADMIN_ACTOR,
    )
    first.tool = "ignored: the keywords win"
    saved = connector_save(
        connector=first,
        domain=billing,
        tool="set_discount",
        kind="python",
        spec={"function": "tests.test_rollbacks.store_connector"},
        actor=ADMIN_ACTOR,
    )
    assert saved.pk == first.pk
    assert list(Connector.objects.values_list("tool", "kind")) == [("set_discount", "python")]
    (changed,) = events("connector.changed")
    assert "kind, spec, secret" in changed.summary and SECRET not in json.dumps(changed.data)


def test_connector_save_by_tool_replaces_the_domains_connector(billing: Domain) -> None:
    first = connector_save(
        domain=billing,
        tool="update_discount",
        kind="http",
        spec=SPEC,
        secret=SECRET,
        actor=ADMIN_ACTOR,
    )
    again = connector_save(
        domain=billing,
        tool="update_discount",
        kind="http",
        spec=SPEC,
        secret=SECRET,
        actor=ADMIN_ACTOR,
    )
    assert again.pk == first.pk and not events("connector.changed")
    connector_save(
        domain=billing,
        tool="update_discount",
        kind="http",
        spec=SPEC,
        secret=SECRET,
        timeout_seconds=2.0,
        actor=ADMIN_ACTOR,
    )
    assert Connector.objects.get().timeout_seconds == 2.0
    (changed,) = events("connector.changed")
    assert changed.summary.endswith("changed: timeout_seconds (http)")


def test_a_password_written_in_a_webhook_url_is_not_recorded(billing: Domain) -> None:
    url = "https://bot:pa55w0rd@hooks.example.com:8443/in"
    webhook_save(webhook=Webhook(domain=billing, url=url), actor=ADMIN_ACTOR)
    (created,) = events("webhook.created")
    assert created.data["url"] == "hooks.example.com:8443"
    assert "pa55w0rd" not in created.summary


def audit_fails(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("the audit trail refused the event")


def _tier(domain: Domain) -> Tier:
    return tier_save(tier=new_tier(domain), actor=ADMIN_ACTOR)


def _webhook(domain: Domain) -> Webhook:
    return Webhook.objects.create(domain=domain, url=HOOK_URL)


def _connector(domain: Domain) -> Connector:
    return Connector.objects.create(domain=domain, tool="update_discount", spec=SPEC, secret=SECRET)


def _change_tier(row: Any) -> None:
    row.sla_seconds = 900
    tier_save(tier=row, actor=ADMIN_ACTOR)


def _change_webhook(row: Any) -> None:
    row.active = False
    webhook_save(webhook=row, actor=ADMIN_ACTOR)


def _change_connector(row: Any) -> None:
    connector_save(
        connector=row,
        domain=row.domain,
        tool="set_discount",
        kind="http",
        spec=SPEC,
        secret=SECRET,
        actor=ADMIN_ACTOR,
    )


@pytest.mark.parametrize(
    ("module", "make", "change", "delete"),
    [
        (
            "approvals.queue.tiers",
            _tier,
            _change_tier,
            lambda row: tier_delete(tier=row, actor=ADMIN_ACTOR),
        ),
        (
            "approvals.notifications.webhooks",
            _webhook,
            _change_webhook,
            lambda row: webhook_delete(webhook=row, actor=ADMIN_ACTOR),
        ),
        (
            "approvals.rollbacks.connectors",
            _connector,
            _change_connector,
            lambda row: connector_delete(connector=row, actor=ADMIN_ACTOR),
        ),
    ],
    ids=["tier", "webhook", "connector"],
)
def test_a_service_change_whose_audit_event_fails_is_undone(
    billing: Domain,
    monkeypatch: pytest.MonkeyPatch,
    module: str,
    make: Callable[[Domain], Any],
    change: Callable[[Any], None],
    delete: Callable[[Any], None],
) -> None:
    row = make(billing)
    stored = type(row).objects.values().get(pk=row.pk)
    monkeypatch.setattr(f"{module}.audit_record", audit_fails)
    with pytest.raises(RuntimeError):
        change(row)
    assert type(row).objects.values().get(pk=row.pk) == stored
    with pytest.raises(RuntimeError):
        delete(row)
    assert type(row).objects.filter(pk=row.pk).exists()


@pytest.mark.parametrize(
    ("model", "module", "form", "changes"),
    [
        ("tier", "approvals.queue.tiers", tier_form, {"sla_seconds": 900}),
        ("webhook", "approvals.notifications.webhooks", webhook_form, {"active": ""}),
        ("connector", "approvals.rollbacks.connectors", connector_form, {"tool": "set_discount"}),
    ],
    ids=["tier", "webhook", "connector"],
)
def test_an_admin_edit_whose_audit_event_fails_changes_nothing(
    admin_client: Client,
    billing: Domain,
    monkeypatch: pytest.MonkeyPatch,
    model: str,
    module: str,
    form: Callable[..., dict[str, Any]],
    changes: dict[str, Any],
) -> None:
    rows = {"tier": Tier, "webhook": Webhook, "connector": Connector}[model].objects
    monkeypatch.setattr(f"{module}.audit_record", audit_fails)
    with pytest.raises(RuntimeError):
        admin_client.post(f"/admin/approvals/{model}/add/", form(billing))
    assert not rows.exists()

    monkeypatch.undo()
    posted(admin_client, f"/admin/approvals/{model}/add/", form(billing))
    stored = list(rows.values())
    pk = stored[0]["id"]
    monkeypatch.setattr(f"{module}.audit_record", audit_fails)
    with pytest.raises(RuntimeError):
        admin_client.post(f"/admin/approvals/{model}/{pk}/change/", form(billing, **changes))
    assert list(rows.values()) == stored
    with pytest.raises(RuntimeError):
        admin_client.post(f"/admin/approvals/{model}/{pk}/delete/", {"post": "yes"})
    assert list(rows.values()) == stored
