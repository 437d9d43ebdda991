"""After a rollback, the same tool on the same targets by the same agent is held back."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from incidents.target import Target

from approvals.api import ProposalData
from approvals.models import Action, Agent, AgentToken
from approvals.policy import PolicyDocument
from approvals.rollbacks import compensation_connected
from tests.agents import record_proposal
from tests.rollback_helpers import executed, records_domain, records_token, run_plan, session_of

pytestmark = pytest.mark.django_db
S = Action.Status


def repeat(token: AgentToken, targets: list[str]) -> Action:
    data = ProposalData(
        session_id="run-2",
        step_index=None,
        tool="set_record",
        verb="update",
        params={},
        target_ids=targets,
        amount=None,
        currency="",
        blast_records=None,
        blast_population=None,
        pre_action_state={"v": 1},
        compensation=None,
    )
    return record_proposal(token, data)


def test_a_repeat_is_escalated_and_a_second_repeat_quarantines_the_agent(
    target: tuple[Target, str],
) -> None:
    served, url = target
    records_domain(url)
    token = records_token()
    executed(token, targets=["a"], pre={"v": 1}, post={"v": 2})
    served.seed({"a": {"v": 2}})
    run_plan(session_of())

    # Other targets are not held back.
    assert repeat(token, ["b"]).status == S.ALLOWED
    first = repeat(token, ["a"])
    assert first.status == S.ESCALATED and first.rule == "flapping-guard" and first.tier == 2
    second = repeat(token, ["a"])
    assert second.status == S.DENIED and second.rule == "flapping-guard"
    agent = Agent.objects.get(name="clerk")
    assert agent.quarantined_at is not None
    assert not AgentToken.objects.filter(agent=agent, revoked_at=None).exists()
    first.refresh_from_db()
    assert first.status == S.CANCELLED  # its open escalation went with the quarantine


def test_the_guard_ends_with_the_cool_down(target: tuple[Target, str], settings: Any) -> None:
    served, url = target
    records_domain(url)
    token = records_token()
    action = executed(token, targets=["a"], pre={"v": 1}, post={"v": 2})
    served.seed({"a": {"v": 2}})
    run_plan(session_of())
    action.refresh_from_db()
    Action.objects.filter(pk=action.pk).update(
        rolled_back_at=action.rolled_back_at
        - timedelta(seconds=settings.ROLLBACK_COOLDOWN_SECONDS + 1)
    )
    assert repeat(token, ["a"]).status == S.ALLOWED


def test_a_connector_that_compensates_makes_an_action_reversible(
    target: tuple[Target, str],
) -> None:
    from approvals.audit import Actor
    from approvals.policy import Proposal, policy_explain, policy_publish

    _, url = target
    domain = records_domain(url)
    document = PolicyDocument.model_validate(
        {
            "rules": [
                {
                    "id": "irreversible",
                    "when": {"irreversible_without_snapshot": True},
                    "outcome": "escalate",
                    "tier": 1,
                    "reason": "cannot be undone",
                }
            ],
            "default_outcome": "allow",
            "unregistered": "allow",
        }
    )
    policy_publish(domain=domain, document=document, actor=Actor.system("tests"))
    token = records_token()
    assert compensation_connected(domain, "create_order")
    assert not compensation_connected(domain, "wipe_record")
    order = ProposalData(
        session_id="run-3",
        step_index=None,
        tool="create_order",
        verb="create",
        params={},
        target_ids=[],
        amount=None,
        currency="",
        blast_records=None,
        blast_population=None,
        pre_action_state=None,
        compensation=None,
    )
    assert record_proposal(token, order).status == S.ALLOWED
    wipe = ProposalData(**{**order.__dict__, "tool": "wipe_record", "verb": "delete"})
    escalated = record_proposal(token, wipe)
    assert escalated.status == S.ESCALATED and escalated.rule == "irreversible"
    verdict, _ = policy_explain(
        domain=domain, proposal=Proposal(agent="clerk", tool="wipe_record", verb="delete")
    )
    assert verdict.rule == "irreversible"


def test_what_the_policy_denies_stays_denied_after_a_rollback(target: tuple[Target, str]) -> None:
    from approvals.audit import Actor
    from approvals.policy import policy_publish

    served, url = target
    domain = records_domain(url)
    token = records_token()
    executed(token, targets=["z1"], pre={"v": 1}, post={"v": 2})
    served.seed({"z1": {"v": 2}})
    run_plan(session_of())
    document = PolicyDocument.model_validate(
        {
            "rules": [
                {
                    "id": "frozen-records",
                    "when": {"protected_targets": ["z*"]},
                    "outcome": "deny",
                    "reason": "z records are frozen",
                }
            ],
            "default_outcome": "allow",
        }
    )
    policy_publish(domain=domain, document=document, actor=Actor.system("tests"))
    denied = repeat(token, ["z1"])
    assert denied.status == S.DENIED and denied.rule == "frozen-records"
    # A repeat on some of the same targets is still a repeat.
    assert repeat(token, ["b", "z1"]).status == S.DENIED
    assert Agent.objects.get(name="clerk").quarantined_at is not None
