from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from approvals.api import idempotency_purge
from approvals.models import Agent, AgentToken, AuditEvent, IdempotencyRecord, PolicyVersion
from tests.agents import agent_token, demo_domain, record_proposal

pytestmark = pytest.mark.django_db


def test_policy_page_lists_the_rules_in_order(viewer, login) -> None:
    demo_domain("procurement")
    page = login(viewer).get(reverse("policies"), {"domain": "procurement"}).content.decode()
    positions = [
        page.index(f"<code>{rule}</code>")
        for rule in ("allow-reads", "flapping", "order-rate", "spend-cap")
    ]
    assert positions == sorted(positions)
    assert "version 1" in page


def test_explain_in_the_ui_names_the_rule(viewer, login) -> None:
    demo_domain("procurement")
    response = login(viewer).get(
        reverse("policies"),
        {
            "domain": "procurement",
            "tool": "create_order",
            "verb": "spend",
            "amount": "750",
            "compensation": "1",
        },
        headers={"HX-Request": "true"},
    )
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="explain"')
    assert "<strong>escalate</strong> to tier 1 by rule <code>spend-cap</code>" in html
    assert "amount 750 is not over" not in html  # spend-cap applies
    # The registry's verb, not the one typed: create_order is registered as create.
    assert "<code>allow-reads</code>: verb create not in" in html


def test_explain_counts_the_agents_recent_actions(viewer, login) -> None:
    from approvals.agents import token_authenticate
    from approvals.api import ProposalData

    token = token_authenticate(agent_token("looper", "procurement", "create_order:create"))
    for _ in range(3):
        record_proposal(
            token,
            ProposalData(
                session_id="s",
                step_index=None,
                tool="create_order",
                verb="create",
                params={"qty": 1, "unit_price": 10},
                target_ids=[],
                amount=None,
                currency="",
                blast_records=None,
                blast_population=None,
                pre_action_state={},
                compensation=None,
            ),
        )
    query = {
        "domain": "procurement",
        "agent": "looper",
        "tool": "create_order",
        "verb": "create",
        "snapshot": "1",
    }
    page = login(viewer).get(reverse("policies"), query).content.decode()
    assert "by rule <code>order-rate</code>" in page


def test_explain_form_names_bad_fields(viewer, login) -> None:
    demo_domain("billing")
    response = login(viewer).get(
        reverse("policies"), {"domain": "billing", "tool": "", "verb": "fly", "amount": "lots"}
    )
    assert response.status_code == 400
    html = response.content.decode()
    for field in ("tool:", "verb:", "amount:"):
        assert field in html


def test_policy_page_needs_desk_access(outsider, login) -> None:
    assert login(outsider).get(reverse("policies")).status_code == 403


def test_admin_publishes_a_new_version_and_audits_it(admin_operator, login) -> None:
    domain = demo_domain("billing")
    rules = [{"id": "deny-all", "outcome": "deny", "reason": "frozen for the audit"}]
    response = login(admin_operator).post(
        reverse("admin:approvals_policyversion_add"),
        {
            "domain": domain.pk,
            "rules": json.dumps(rules),
            "default_outcome": "deny",
            "default_tier": 1,
            "comment": "freeze",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    latest = PolicyVersion.objects.filter(domain=domain).order_by("-version").first()
    assert latest.version == 2 and latest.rules[0]["id"] == "deny-all"
    assert AuditEvent.objects.get(action="policy.published", actor=admin_operator.username)


def test_admin_refuses_an_invalid_policy_and_says_where(admin_operator, login) -> None:
    domain = demo_domain("billing")
    rules = [{"id": "x", "outcome": "escalate", "reason": "no tier given"}]
    response = login(admin_operator).post(
        reverse("admin:approvals_policyversion_add"),
        {
            "domain": domain.pk,
            "rules": json.dumps(rules),
            "default_outcome": "escalate",
            "default_tier": 1,
        },
    )
    assert response.status_code == 200
    assert "rules.0: Value error, an escalate rule needs a tier" in response.content.decode()
    assert PolicyVersion.objects.filter(domain=domain).count() == 1


def test_admin_revokes_tokens(admin_operator, login) -> None:
    token = agent_token("buyer", "procurement", "*:read")
    record = AgentToken.objects.get(prefix=token[:16])
    response = login(admin_operator).post(
        reverse("admin:approvals_agenttoken_changelist"),
        {"action": "revoke", "_selected_action": [record.pk]},
    )
    assert response.status_code == 302
    record.refresh_from_db()
    assert record.revoked_at is not None
    assert AuditEvent.objects.get(action="token.revoked").actor == admin_operator.username


def test_idempotency_keys_are_kept_48_hours() -> None:
    agent = Agent.objects.create(name="buyer")
    old = IdempotencyRecord.objects.create(agent=agent, key="old", request_hash="x")
    recent = IdempotencyRecord.objects.create(agent=agent, key="recent", request_hash="x")
    IdempotencyRecord.objects.filter(pk=old.pk).update(
        created_at=timezone.now() - timedelta(hours=48, minutes=1)
    )
    IdempotencyRecord.objects.filter(pk=recent.pk).update(
        created_at=timezone.now() - timedelta(hours=47)
    )
    assert idempotency_purge() == 1
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["recent"]
