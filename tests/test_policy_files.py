from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from approvals.agents import token_authenticate
from approvals.api import ProposalData
from approvals.models import Action, AuditEvent, PolicyVersion
from tests.agents import agent_token, demo_domain, record_proposal

pytestmark = pytest.mark.django_db


def test_export_then_import_publishes_the_next_version(tmp_path) -> None:
    demo_domain("procurement")
    target = tmp_path / "procurement.json"
    call_command("policy", "export", "procurement", "-o", str(target))
    exported = json.loads(target.read_text())
    assert exported["domain"] == "procurement" and exported["version"] == 1
    assert [r["id"] for r in exported["rules"]][:3] == ["allow-reads", "flapping", "order-rate"]
    exported["rules"][3]["when"]["amount_over"] = "250"
    exported["comment"] = "Tighter cap"
    target.write_text(json.dumps(exported))
    out = StringIO()
    call_command("policy", "import", str(target), stdout=out)
    assert "procurement: policy v2 published" in out.getvalue()
    latest = PolicyVersion.objects.get(domain__slug="procurement", version=2)
    assert latest.rules[3]["when"]["amount_over"] == "250"
    assert AuditEvent.objects.filter(action="policy.published", object_id="procurement:v2").exists()


def test_import_names_the_bad_field_and_publishes_nothing(tmp_path) -> None:
    demo_domain("billing")
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "domain": "billing",
                "rules": [{"id": "x", "outcome": "escalate", "reason": "r", "tier": 9}],
            }
        )
    )
    with pytest.raises(CommandError, match=r"rules\.0\.tier: Input should be less than or equal"):
        call_command("policy", "import", str(bad))
    assert PolicyVersion.objects.filter(domain__slug="billing").count() == 1
    bad.write_text("{not json")
    with pytest.raises(CommandError, match="bad.json"):
        call_command("policy", "import", str(bad))


def proposal(**overrides) -> ProposalData:
    fields = {
        "session_id": "s",
        "step_index": None,
        "tool": "create_order",
        "verb": "create",
        "params": {"sku": "X", "qty": 1, "unit_price": 10},
        "target_ids": ["PO-1"],
        "amount": None,
        "currency": "",
        "blast_records": None,
        "blast_population": None,
        "pre_action_state": {"x": 1},
        "compensation": None,
    }
    fields.update(overrides)
    return ProposalData(**fields)  # type: ignore[arg-type]


def test_rate_window_counts_only_recent_actions() -> None:
    token = token_authenticate(agent_token("looper", "procurement", "create_order:create"))
    for _ in range(3):
        record_proposal(token, proposal())
    # Push the three past the one-hour window: they no longer count.
    Action.objects.update(created_at=timezone.now() - timedelta(hours=1, seconds=1))
    assert record_proposal(token, proposal()).status == "allowed"
    assert record_proposal(token, proposal()).status == "allowed"
    assert record_proposal(token, proposal()).status == "allowed"
    fourth = record_proposal(token, proposal())
    assert (fourth.status, fourth.rule) == ("escalated", "order-rate")


def test_repeat_of_a_rolled_back_action_is_escalated() -> None:
    token = token_authenticate(agent_token("buyer", "procurement", "create_order:create"))
    first = record_proposal(token, proposal())
    assert first.status == "allowed"
    # Rolled back before the flapping guard's cool-down: the policy's own rule sees the repeat.
    Action.objects.filter(pk=first.pk).update(
        status=Action.Status.ROLLED_BACK, rolled_back_at=timezone.now() - timedelta(days=1)
    )
    repeat = record_proposal(token, proposal())
    assert (repeat.status, repeat.rule, repeat.tier) == ("escalated", "flapping", 2)
    elsewhere = record_proposal(token, proposal(target_ids=["PO-2"]))
    assert elsewhere.status == "allowed"


def test_the_tool_registry_exports_and_imports_with_the_rules_kept(tmp_path) -> None:
    demo_domain("procurement")
    target = tmp_path / "tools.json"
    call_command("tools", "export", "procurement", "-o", str(target))
    registry = json.loads(target.read_text())
    assert registry["unregistered"] == "escalate"
    create = next(t for t in registry["tools"] if t["name"] == "create_order")
    assert create["amount"] == {"params": ["qty", "unit_price"], "currency": "USD"}
    registry["tools"].append(
        {"name": "pay_invoice", "verb": "spend", "amount": {"params": ["total"], "currency": "EUR"}}
    )
    target.write_text(json.dumps(registry))
    out = StringIO()
    call_command("tools", "import", str(target), stdout=out)
    assert "procurement: policy v2 published with 3 registered tools" in out.getvalue()
    before, after = (
        PolicyVersion.objects.get(domain__slug="procurement", version=v) for v in (1, 2)
    )
    assert after.rules == before.rules
    assert [t["name"] for t in after.tools][-1] == "pay_invoice"
    event = AuditEvent.objects.get(action="policy.published", object_id="procurement:v2")
    assert "pay_invoice" in event.data["tools"]
    # A registry entry that contradicts itself is refused, and nothing is published.
    registry["tools"].append({"name": "void_invoice", "verb": "update", "undo": "compensate"})
    target.write_text(json.dumps(registry))
    with pytest.raises(CommandError, match="compensating_tool"):
        call_command("tools", "import", str(target))
    assert not PolicyVersion.objects.filter(domain__slug="procurement", version=3).exists()
