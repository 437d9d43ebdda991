"""The review page shows how an action would be undone, as the exact request a rollback would
send; an escalation the desk knows no undo for waits one tier higher, where its domain says."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import AbstractUser
from django.core.management import call_command
from django.urls import reverse
from incidents.target import Target

from approvals.audit import Actor
from approvals.models import Action, AuditEvent, Domain
from approvals.policy import Match, PolicyDocument, Rule, policy_publish
from tests.agents import agent_token, propose
from tests.servers import Desk
from tests.test_runs import reviewed_domain

pytestmark = pytest.mark.django_db(transaction=True)

STATE = {"id": "acct-1", "plan": "pro", "credit_limit": 1000}


def proposed(desk: Desk, slug: str, **body: Any) -> Action:
    token = agent_token("clerk", slug, "set_record:update")
    reply = propose(
        desk,
        token,
        {
            "session_id": "run-1",
            "tool": "set_record",
            "verb": "update",
            "params": {"credit_limit": 2000},
            "target_ids": ["acct-1"],
            **body,
        },
    )
    assert reply.status == 201, reply.json()
    return Action.objects.get(pk=reply.json()["id"])


def test_the_card_shows_the_exact_restore_request(
    desk: Desk, target: tuple[Target, str], login: Any, viewer: AbstractUser
) -> None:
    served, url = target
    reviewed_domain(url)
    served.seed({"acct-1": STATE})
    action = proposed(desk, "accounts", pre_action_state=STATE)
    assert action.tier == 1, action.reason  # a known undo: the tier the policy says

    page = login(viewer).get(reverse("review", args=[action.pk])).content.decode()

    assert 'id="undo-preview" data-known="yes"' in page
    assert "restore the snapshot (restores the desk&#x27;s own read of the target)" in page
    request = page[page.index('<pre class="json undo-request"') :]
    request = request[request.index(">") + 1 : request.index("</pre>")]
    lines = request.split("\n")
    assert lines[0] == f"PUT {url}/records/acct-1"
    assert lines[1] == "Idempotency-Key: rollback:&lt;plan&gt;:&lt;step&gt;"
    body = "\n".join(lines[lines.index("") + 1 :]).replace("&quot;", '"')
    assert json.loads(body) == action.desk_snapshot == STATE


def test_an_escalation_with_no_known_undo_waits_one_tier_higher(
    desk: Desk, login: Any, viewer: AbstractUser
) -> None:
    reviewed_domain(None, "ledger")  # no connector: nothing the desk can undo
    action = proposed(desk, "ledger", pre_action_state=STATE)
    assert action.tier == 2
    assert action.reason == "every change; raised from tier 1: no known undo"
    event = AuditEvent.objects.get(action="action.escalated", object_id=str(action.pk))
    assert event.data["tier"] == 2 and "no known undo" in event.summary
    page = login(viewer).get(reverse("review", args=[action.pk])).content.decode()
    assert 'id="undo-preview" data-known="no"' in page
    assert "No known undo</strong>: it waits one tier higher than its policy says" in page
    assert "no connector restores or compensates it" in page


def test_the_rule_is_a_domain_setting_changed_on_the_command_line_and_audited(
    desk: Desk,
) -> None:
    reviewed_domain(None, "ledger")
    call_command("policy", "undo-rule", "ledger", "off")
    assert Domain.objects.get(slug="ledger").raise_tier_without_undo is False
    event = AuditEvent.objects.get(action="domain.undo_rule_changed")
    assert event.data == {"raise_tier_without_undo": False} and event.actor == "cli"
    assert proposed(desk, "ledger", pre_action_state=STATE).tier == 1
    call_command("policy", "undo-rule", "ledger", "on")
    assert proposed(desk, "ledger", pre_action_state=STATE).tier == 2


def test_at_the_top_tier_it_stays_and_says_so(desk: Desk) -> None:
    domain = reviewed_domain(None, "ledger")
    rule = Rule(id="top", match=Match(verbs=["update"]), outcome="escalate", tier=3, reason="top")
    document = PolicyDocument(rules=[rule], default_outcome="allow", unregistered="allow")
    policy_publish(domain=domain, document=document, actor=Actor.system("tests"))
    action = proposed(desk, "ledger", pre_action_state=STATE)
    assert action.tier == 3 and action.reason == "top; no known undo (already at the top tier)"
