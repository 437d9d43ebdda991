"""A candidate policy replayed over a domain's past actions: which verdicts would change, per
rule, before anyone publishes it; nothing is written but the audited run."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import AbstractUser
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from approvals.audit import Actor
from approvals.core import Refused
from approvals.models import Action, AuditEvent, PolicyVersion
from approvals.policy import DEFAULT_POLICIES, PolicyDocument, policy_backtest
from tests.agents import agent_token, propose
from tests.servers import Desk

pytestmark = pytest.mark.django_db(transaction=True)

ORDERS = ("create_order:create", "*:read")


def orders(desk: Desk, amounts: list[str]) -> list[dict[str, Any]]:
    token = agent_token("buyer", "procurement", *ORDERS)
    verdicts = []
    for amount in amounts:
        body = {
            "session_id": "run-1",
            "tool": "create_order",
            "verb": "create",
            "params": {"sku": "GPU-A100", "qty": 1, "unit_price": amount},
            "pre_action_state": {"open_orders": 0},
        }
        reply = propose(desk, token, body)
        assert reply.status == 201, reply.json()
        verdicts.append(reply.json())
    return verdicts


def stricter() -> PolicyDocument:
    """The default procurement policy with every order over 100 escalated (it was 500)."""
    raw = json.loads(json.dumps(DEFAULT_POLICIES["procurement"]))
    for rule in raw["rules"]:
        when = rule.get("when", {})
        if when.get("amount_over") is not None and rule["outcome"] == "escalate":
            when["amount_over"] = "100"
    return PolicyDocument.model_validate(raw)


def test_a_stricter_policy_shows_which_verdicts_would_change_and_writes_only_its_audit(
    desk: Desk,
) -> None:
    before = [v["status"] for v in orders(desk, ["50", "150", "250", "900"])]
    assert before == ["allowed", "allowed", "allowed", "pending"]
    actions = {a.pk: (a.status, a.tier, a.updated_at) for a in Action.objects.all()}
    versions = PolicyVersion.objects.count()

    run = policy_backtest(
        domain=Action.objects.first().domain,  # type: ignore[union-attr]
        document=stricter(),
        since=timedelta(days=1),
        actor=Actor("user", "ada"),
    )

    assert run.replayed == 4 and run.changed == 2
    assert dict(run.transitions) == {("allow", "escalate (tier 1)"): 2}
    assert sum(run.by_rule.values()) == 2
    assert sorted(c.tool for c in run.changes) == ["create_order", "create_order"]
    # Nothing but the audited run is written.
    assert {a.pk: (a.status, a.tier, a.updated_at) for a in Action.objects.all()} == actions
    assert PolicyVersion.objects.count() == versions
    event = AuditEvent.objects.get(action="policy.backtested")
    assert event.data["changed"] == 2 and event.data["replayed"] == 4
    assert event.data["transitions"] == {"allow -> escalate (tier 1)": 2}
    assert event.actor == "ada"


def test_the_current_policy_changes_nothing(desk: Desk) -> None:
    orders(desk, ["50", "900"])
    document = PolicyDocument.model_validate(DEFAULT_POLICIES["procurement"])
    domain = Action.objects.first().domain  # type: ignore[union-attr]
    run = policy_backtest(
        domain=domain, document=document, since=timedelta(hours=1), actor=Actor("user", "ada")
    )
    assert run.replayed == 2 and run.changed == 0 and run.changes == []


def test_rate_rules_count_the_calls_before_each_replayed_one(desk: Desk) -> None:
    orders(desk, ["10"] * 3)
    raw = json.loads(json.dumps(DEFAULT_POLICIES["procurement"]))
    raw["rules"].insert(
        0,
        {
            "id": "at-most-two-a-minute",
            "match": {"tools": ["create_order"]},
            "when": {"rate_over": {"count": 2, "window_seconds": 60}},
            "outcome": "deny",
            "reason": "too fast",
        },
    )
    run = policy_backtest(
        domain=Action.objects.first().domain,  # type: ignore[union-attr]
        document=PolicyDocument.model_validate(raw),
        since=timedelta(hours=1),
        actor=Actor("user", "ada"),
    )
    # The first two stay allowed; the third is over the rate.
    assert dict(run.transitions) == {("allow", "deny"): 1}
    assert dict(run.by_rule) == {"at-most-two-a-minute": 1}
    oldest_two = sorted(Action.objects.all(), key=lambda a: a.created_at)[:2]
    assert {c.action_id for c in run.changes}.isdisjoint({str(a.pk) for a in oldest_two})


def test_a_window_out_of_range_is_refused_naming_it(desk: Desk) -> None:
    orders(desk, ["10"])
    domain = Action.objects.first().domain  # type: ignore[union-attr]
    for since in (timedelta(0), timedelta(days=91)):
        with pytest.raises(Refused) as refused:
            policy_backtest(
                domain=domain, document=stricter(), since=since, actor=Actor("user", "ada")
            )
        assert refused.value.field == "since"
    assert not AuditEvent.objects.filter(action="policy.backtested").exists()


def test_the_command_replays_a_file_and_prints_the_table(desk: Desk, tmp_path: Path) -> None:
    orders(desk, ["50", "150"])
    path = tmp_path / "candidate.json"
    path.write_text(json.dumps({"domain": "procurement", **stricter().model_dump(mode="json")}))
    out = io.StringIO()
    call_command("policy", "backtest", str(path), "--since", "7d", stdout=out)
    printed = out.getvalue()
    assert "2 actions replayed, 1 verdict would change" in printed
    assert "allow -> escalate (tier 1): 1" in printed
    assert AuditEvent.objects.get(action="policy.backtested").actor == "cli"


def test_the_policies_page_backtests_a_pasted_policy(
    desk: Desk, login: Any, admin_operator: AbstractUser, approver: AbstractUser
) -> None:
    orders(desk, ["50", "150"])
    url = reverse("policy-backtest")
    exported = {"domain": "procurement", "version": 1, **stricter().model_dump(mode="json")}
    body = {
        "domain": "procurement",
        "document": json.dumps(exported),  # as `policy export` writes it
        "since": "2",
        "unit": "days",
    }
    assert login(approver).post(url, body).status_code == 403
    page = login(admin_operator).post(url, body).content.decode()
    assert 'id="backtest"' in page and "1 verdict would change" in page
    assert "<td>allow</td><td>escalate (tier 1)</td><td>1</td>" in page
    bad = login(admin_operator).post(url, {**body, "document": "{"})
    assert bad.status_code == 422 and "document: not JSON" in bad.content.decode()
    assert AuditEvent.objects.filter(action="policy.backtested").count() == 1
    since = timezone.now() - timedelta(days=2)
    assert (
        AuditEvent.objects.get(action="policy.backtested").data["since"] >= since.isoformat()[:10]
    )


def test_the_command_names_a_window_out_of_range(desk: Desk, tmp_path: Path) -> None:
    from django.core.management.base import CommandError

    agent_token("buyer", "procurement", *ORDERS)  # the domain, with its policy
    path = tmp_path / "candidate.json"
    path.write_text(json.dumps({"domain": "procurement", **stricter().model_dump(mode="json")}))
    with pytest.raises(CommandError, match="since: a backtest window"):
        call_command("policy", "backtest", str(path), "--since", "200d")
